//! Attack and manipulation detectors, pure: each takes the events of a block (or a transaction)
//! and returns what it found with the evidence. Amounts are `f64` token base units: detectors
//! compare and rank, they never book.
//!
//! - [`find_sandwiches`]: front-run and back-run by the same actor in opposite directions on one
//!   pool in one block around at least one victim swap (mev-inspect's rule: the front-run's
//!   recipient is the back-run's sender).
//! - [`flash_loan_attack`]: a transaction that takes a flash loan, moves a pool's price beyond a
//!   bound and leaves a profit above a share of the loan (Forta's rule: 2%).
//! - [`drains`]: a pool losing more than a share of a reserve within a window of blocks.
//! - [`liquidation_bonus_error`]: collateral seized = debt covered × price ratio × bonus.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

/// Version stored with every alert; bump it when a rule changes.
pub const DETECTOR_VERSION: &str = "detectors-v1";

/// What an alert is about: one kind per detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    /// [`find_sandwiches`].
    Sandwich,
    /// [`flash_loan_attack`].
    FlashLoanAttack,
    /// [`drains`].
    LiquidityDrain,
    /// A swap the anomaly model scores as an outlier.
    PoolAnomaly,
    /// A reserve or pool whose liquidity is forecast to run short.
    LiquidityShortage,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::Sandwich,
        AlertKind::FlashLoanAttack,
        AlertKind::LiquidityDrain,
        AlertKind::PoolAnomaly,
        AlertKind::LiquidityShortage,
    ];

    /// The name stored in `risk_alert.kind` and published on `chainfold.risk.v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Sandwich => "SANDWICH",
            AlertKind::FlashLoanAttack => "FLASH_LOAN_ATTACK",
            AlertKind::LiquidityDrain => "LIQUIDITY_DRAIN",
            AlertKind::PoolAnomaly => "POOL_ANOMALY",
            AlertKind::LiquidityShortage => "LIQUIDITY_SHORTAGE",
        }
    }

    /// The attack stage of Forta's model the kind shows: `preparation` for anomalies,
    /// `exploitation` for attacks; shortages are market risk, no stage.
    pub fn stage(self) -> Option<&'static str> {
        match self {
            AlertKind::PoolAnomaly => Some("preparation"),
            AlertKind::FlashLoanAttack | AlertKind::LiquidityDrain | AlertKind::Sandwich => {
                Some("exploitation")
            }
            AlertKind::LiquidityShortage => None,
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AlertKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| format!("unknown alert kind {text:?}"))
    }
}

/// How bad an alert or incident is, lowest first (so `max` is the worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The name stored in `risk_alert.severity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }

    /// One level worse, `Critical` staying `Critical`.
    pub fn raised(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| format!("unknown severity {text:?}"))
    }
}

/// One swap as the detectors need it.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapLeg {
    pub block: u64,
    pub tx_hash: B256,
    pub tx_position: u32,
    pub trace: Vec<u32>,
    pub pool: Address,
    /// Who called the pool (a router or the trader's contract).
    pub sender: Address,
    /// Who received the output.
    pub recipient: Address,
    pub token_in: Address,
    pub amount_in: f64,
    pub token_out: Address,
    pub amount_out: f64,
}

/// A sandwich with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandwich {
    pub block: u64,
    pub pool: Address,
    pub sandwicher: Address,
    pub front_tx: B256,
    pub back_tx: B256,
    pub victim_txs: Vec<B256>,
    /// The token the sandwicher put in first and got back.
    pub token: Address,
    /// Back-run output − front-run input, in `token` base units (gross of gas).
    pub profit: f64,
}

/// Public routers and aggregators: many users' swaps pass through them (the router is the
/// pool's caller and, for ETH outputs, the recipient), so they are never the sandwicher.
pub const PUBLIC_ROUTERS: [Address; 6] = [
    alloy_primitives::address!("7a250d5630b4cf539739df2c5dacb4c659f2488d"), // Uniswap V2 Router02
    alloy_primitives::address!("d9e1ce17f2641f24ae83637ab66a2cca9c378b9f"), // SushiSwap router
    alloy_primitives::address!("e592427a0aece92de3edee1f18e0157c05861564"), // Uniswap V3 SwapRouter
    alloy_primitives::address!("68b3465833fb72a70ecdf485e0e4c7bd8665fc45"), // Uniswap SwapRouter02
    alloy_primitives::address!("11111112542d85b3ef69ae05771c2dccff4faa26"), // 1inch v3
    alloy_primitives::address!("def1c0ded9bec7f1a1670819833240f027b25eff"), // 0x exchange proxy
];

/// Finds sandwiches among `swaps` (any order; grouped by block and pool here). A front-run `f`
/// and a back-run `b` in a later transaction of the same block and pool with `b.token_in =
/// f.token_out`, `b.token_out = f.token_in` and `b.sender = f.recipient`, with at least one swap
/// of another transaction between them in `f`'s direction whose recipient is not the
/// sandwicher; the back-run returns more of the token than the front-run put in (a sandwich is
/// made for profit), and the actor is not a [`PUBLIC_ROUTERS`] entry. Each front-run pairs
/// with its nearest back-run.
pub fn find_sandwiches(swaps: &[SwapLeg]) -> Vec<Sandwich> {
    let mut by_pool: BTreeMap<(u64, Address), Vec<&SwapLeg>> = BTreeMap::new();
    for s in swaps {
        by_pool.entry((s.block, s.pool)).or_default().push(s);
    }
    let mut found = Vec::new();
    for ((block, pool), mut legs) in by_pool {
        legs.sort_by(|a, b| (a.tx_position, &a.trace).cmp(&(b.tx_position, &b.trace)));
        let mut used_back = std::collections::HashSet::new();
        for (i, f) in legs.iter().enumerate() {
            let actor = f.recipient;
            if PUBLIC_ROUTERS.contains(&actor) {
                continue;
            }
            let back = legs[i + 1..].iter().position(|b| {
                b.tx_hash != f.tx_hash
                    && b.sender == actor
                    && b.token_in == f.token_out
                    && b.token_out == f.token_in
                    && b.amount_out > f.amount_in
                    && !used_back.contains(&b.tx_hash)
            });
            let Some(offset) = back else { continue };
            let b = legs[i + 1 + offset];
            let victims: Vec<B256> = legs[i + 1..i + 1 + offset]
                .iter()
                .filter(|v| {
                    v.tx_hash != f.tx_hash
                        && v.tx_hash != b.tx_hash
                        && v.token_in == f.token_in
                        && v.token_out == f.token_out
                        && v.recipient != actor
                })
                .map(|v| v.tx_hash)
                .collect();
            if victims.is_empty() {
                continue;
            }
            let mut victim_txs = victims;
            victim_txs.dedup();
            used_back.insert(b.tx_hash);
            found.push(Sandwich {
                block,
                pool,
                sandwicher: actor,
                front_tx: f.tx_hash,
                back_tx: b.tx_hash,
                victim_txs,
                token: f.token_in,
                profit: b.amount_out - f.amount_in,
            });
        }
    }
    found
}

/// A Uniswap-V2-style pool's price (token1 per token0, in base units) before and after a
/// transaction, from its `Sync` reserves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceMove {
    pub pool: Address,
    pub before: f64,
    pub after: f64,
}

impl PriceMove {
    /// |after / before − 1|.
    pub fn relative(&self) -> f64 {
        if self.before > 0.0 {
            (self.after / self.before - 1.0).abs()
        } else {
            0.0
        }
    }
}

/// A flash-loan attack's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashLoanAttack {
    pub tx_hash: B256,
    pub initiator: Address,
    pub asset: Address,
    pub loan: f64,
    pub premium: f64,
    /// The loan asset gained by the transaction's swaps, net of the premium.
    pub profit: f64,
    /// profit / loan.
    pub profit_share: f64,
    /// The largest pool price move within the transaction and its pool.
    pub max_price_move: f64,
    pub moved_pool: Address,
}

/// Thresholds of [`flash_loan_attack`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlashLoanRule {
    /// Least price move of a pool within the transaction (0.1 = 10%).
    pub min_price_move: f64,
    /// Least profit as a share of the loan (Forta: 0.02).
    pub min_profit_share: f64,
}

impl Default for FlashLoanRule {
    fn default() -> Self {
        FlashLoanRule {
            min_price_move: 0.1,
            min_profit_share: 0.02,
        }
    }
}

/// A flash loan as a transaction took it (base units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loan {
    pub tx_hash: B256,
    pub initiator: Address,
    pub asset: Address,
    pub amount: f64,
    pub premium: f64,
}

/// One transaction's flash loan, swaps and pool price moves → an attack if the rule holds. The
/// profit is what the transaction's swaps net in the loan asset (out − in) minus the premium:
/// the swaps of an attack run through the attacker's contract, so their net flow is its gain.
pub fn flash_loan_attack(
    rule: &FlashLoanRule,
    loan: &Loan,
    swaps: &[SwapLeg],
    moves: &[PriceMove],
) -> Option<FlashLoanAttack> {
    let Loan {
        tx_hash,
        initiator,
        asset,
        amount: loan,
        premium,
    } = *loan;
    if loan <= 0.0 {
        return None;
    }
    let gained: f64 = swaps
        .iter()
        .map(|s| {
            let mut net = 0.0;
            if s.token_out == asset {
                net += s.amount_out;
            }
            if s.token_in == asset {
                net -= s.amount_in;
            }
            net
        })
        .sum();
    let profit = gained - premium;
    let biggest = moves
        .iter()
        .max_by(|a, b| a.relative().total_cmp(&b.relative()))?;
    let attack = FlashLoanAttack {
        tx_hash,
        initiator,
        asset,
        loan,
        premium,
        profit,
        profit_share: profit / loan,
        max_price_move: biggest.relative(),
        moved_pool: biggest.pool,
    };
    (attack.max_price_move >= rule.min_price_move && attack.profit_share > rule.min_profit_share)
        .then_some(attack)
}

/// A pool's reserves at a block (after its last `Sync` in the block).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReserveState {
    pub block: u64,
    pub reserve0: f64,
    pub reserve1: f64,
}

/// A drain's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub pool: Address,
    pub from_block: u64,
    pub to_block: u64,
    /// Largest share of a reserve lost (0.9 = 90%).
    pub share_lost: f64,
    /// Which reserve: 0 or 1.
    pub reserve: u8,
    pub before: f64,
    pub after: f64,
}

/// Drains in one pool's reserve history (ordered by block): the largest drop of either reserve
/// from its maximum within the last `window_blocks` blocks, reported once per episode when it
/// exceeds `min_share`.
pub fn drains(
    pool: Address,
    history: &[ReserveState],
    window_blocks: u64,
    min_share: f64,
) -> Vec<Drain> {
    let mut out: Vec<Drain> = Vec::new();
    for (i, now) in history.iter().enumerate() {
        let start = history[..i]
            .iter()
            .position(|s| s.block + window_blocks >= now.block)
            .unwrap_or(i);
        let mut best: Option<Drain> = None;
        for before in &history[start..i] {
            for (reserve, b, a) in [
                (0u8, before.reserve0, now.reserve0),
                (1u8, before.reserve1, now.reserve1),
            ] {
                if b <= 0.0 {
                    continue;
                }
                let lost = 1.0 - a / b;
                if lost > min_share && best.as_ref().is_none_or(|d| lost > d.share_lost) {
                    best = Some(Drain {
                        pool,
                        from_block: before.block,
                        to_block: now.block,
                        share_lost: lost,
                        reserve,
                        before: b,
                        after: a,
                    });
                }
            }
        }
        if let Some(d) = best {
            // One alert per episode: a drain continuing from the same starting point is the
            // same drain.
            match out.last_mut() {
                Some(last) if last.from_block == d.from_block && last.reserve == d.reserve => {
                    *last = d;
                }
                _ => out.push(d),
            }
        }
    }
    out
}

/// Relative error of the liquidation bonus identity: `collateral seized × collateral price =
/// debt covered × debt price × bonus` (amounts in whole tokens, prices in one unit, bonus as a
/// factor like 1.05). `None` when an input is missing or zero.
pub fn liquidation_bonus_error(
    collateral_seized: f64,
    collateral_price: f64,
    debt_covered: f64,
    debt_price: f64,
    bonus: f64,
) -> Option<f64> {
    let expected = debt_covered * debt_price * bonus;
    let actual = collateral_seized * collateral_price;
    (expected > 0.0 && actual > 0.0).then(|| (actual / expected - 1.0).abs())
}

/// An alert as correlation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRef {
    pub id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub chain_id: u64,
    /// Seconds (the alert's event time): the window is in time because block numbers of
    /// different chains do not compare.
    pub at: i64,
    /// Actors (not pools: many unrelated actors share a pool).
    pub addresses: Vec<String>,
    pub tx_hashes: Vec<String>,
}

/// Alerts merged into one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The id of its earliest alert: stable while the incident grows.
    pub id: String,
    pub alert_ids: Vec<String>,
    pub chain_ids: Vec<u64>,
    /// Forta's attack stages the members show: `preparation` (anomalies), `exploitation`
    /// (flash-loan attacks, drains, sandwiches); funding and laundering need transfer tracing,
    /// which the event log does not carry.
    pub stages: Vec<String>,
    /// The members' highest, one level higher when several kinds combine.
    pub severity: Severity,
    pub first_at: i64,
    pub last_at: i64,
}

/// Merges alerts that share an actor address or a transaction, directly or through other
/// alerts, within `window_secs` of each other (any chains). `alerts` sorted by time.
pub fn correlate(alerts: &[AlertRef], window_secs: i64) -> Vec<Incident> {
    let n = alerts.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in (i + 1)..n {
            if (alerts[j].at - alerts[i].at).abs() > window_secs {
                continue;
            }
            let shares = alerts[i]
                .addresses
                .iter()
                .any(|a| alerts[j].addresses.contains(a))
                || alerts[i]
                    .tx_hashes
                    .iter()
                    .any(|t| alerts[j].tx_hashes.contains(t));
            if shares {
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<&AlertRef>> = BTreeMap::new();
    for (i, alert) in alerts.iter().enumerate() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(alert);
    }
    groups
        .into_values()
        .map(|members| {
            let mut kinds: Vec<AlertKind> = members.iter().map(|a| a.kind).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let top = members
                .iter()
                .map(|a| a.severity)
                .max()
                .unwrap_or(Severity::Low);
            let severity = if kinds.len() > 1 { top.raised() } else { top };
            let mut stages: Vec<String> = Vec::new();
            for stage in ["preparation", "exploitation"] {
                if kinds.iter().any(|k| k.stage() == Some(stage)) {
                    stages.push(stage.to_owned());
                }
            }
            let mut chain_ids: Vec<u64> = members.iter().map(|a| a.chain_id).collect();
            chain_ids.sort_unstable();
            chain_ids.dedup();
            Incident {
                id: members[0].id.clone(),
                alert_ids: members.iter().map(|a| a.id.clone()).collect(),
                chain_ids,
                stages,
                severity,
                first_at: members.iter().map(|a| a.at).min().unwrap_or_default(),
                last_at: members.iter().map(|a| a.at).max().unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    fn tx(n: u8) -> B256 {
        B256::repeat_byte(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn leg(
        position: u32,
        hash: u8,
        sender: u8,
        recipient: u8,
        token_in: u8,
        amount_in: f64,
        token_out: u8,
        amount_out: f64,
    ) -> SwapLeg {
        SwapLeg {
            block: 100,
            tx_hash: tx(hash),
            tx_position: position,
            trace: vec![0],
            pool: addr(0xAA),
            sender: addr(sender),
            recipient: addr(recipient),
            token_in: addr(token_in),
            amount_in,
            token_out: addr(token_out),
            amount_out,
        }
    }

    #[test]
    fn a_sandwich_is_found_with_its_victim_and_profit() {
        // Bot 0xB0 buys token 2 with token 1, a victim (through router 0x77) buys too, the bot
        // sells token 2 back for more token 1.
        let swaps = vec![
            leg(1, 1, 0xB0, 0xB0, 1, 100.0, 2, 50.0),
            leg(2, 2, 0x77, 0x55, 1, 300.0, 2, 140.0),
            leg(3, 3, 0xB0, 0xB0, 2, 50.0, 1, 108.0),
        ];
        let found = find_sandwiches(&swaps);
        assert_eq!(found.len(), 1);
        let s = &found[0];
        assert_eq!((s.front_tx, s.back_tx), (tx(1), tx(3)));
        assert_eq!(s.victim_txs, vec![tx(2)]);
        assert_eq!(s.sandwicher, addr(0xB0));
        assert_eq!(s.profit, 8.0);
    }

    #[test]
    fn no_sandwich_without_a_victim_or_the_same_actor_or_the_opposite_direction() {
        // No victim between.
        let alone = vec![
            leg(1, 1, 0xB0, 0xB0, 1, 100.0, 2, 50.0),
            leg(3, 3, 0xB0, 0xB0, 2, 50.0, 1, 108.0),
        ];
        assert!(find_sandwiches(&alone).is_empty());
        // Two users of one router: the router sends, users receive; not one actor.
        let router = vec![
            leg(1, 1, 0x77, 0x51, 1, 100.0, 2, 50.0),
            leg(2, 2, 0x77, 0x52, 1, 300.0, 2, 140.0),
            leg(3, 3, 0x77, 0x53, 2, 50.0, 1, 108.0),
        ];
        assert!(find_sandwiches(&router).is_empty());
        // A public router as the "actor" (it calls the pool and receives ETH outputs).
        let uni = PUBLIC_ROUTERS[0];
        let mut through_router = vec![
            leg(1, 1, 0, 0, 1, 100.0, 2, 50.0),
            leg(2, 2, 0x77, 0x55, 1, 300.0, 2, 140.0),
            leg(3, 3, 0, 0, 2, 50.0, 1, 108.0),
        ];
        for i in [0, 2] {
            through_router[i].sender = uni;
            through_router[i].recipient = uni;
        }
        assert!(find_sandwiches(&through_router).is_empty());
        // Back-run returning less than the front-run put in: not a sandwich.
        let loss = vec![
            leg(1, 1, 0xB0, 0xB0, 1, 100.0, 2, 50.0),
            leg(2, 2, 0x77, 0x55, 1, 300.0, 2, 140.0),
            leg(3, 3, 0xB0, 0xB0, 2, 50.0, 1, 99.0),
        ];
        assert!(find_sandwiches(&loss).is_empty());
        // The middle swap goes the other way: not a victim.
        let opposite = vec![
            leg(1, 1, 0xB0, 0xB0, 1, 100.0, 2, 50.0),
            leg(2, 2, 0x77, 0x55, 2, 10.0, 1, 20.0),
            leg(3, 3, 0xB0, 0xB0, 2, 50.0, 1, 108.0),
        ];
        assert!(find_sandwiches(&opposite).is_empty());
        // Different blocks.
        let mut later = alone.clone();
        later.insert(1, leg(2, 2, 0x77, 0x55, 1, 300.0, 2, 140.0));
        later[2].block = 101;
        assert!(find_sandwiches(&later).is_empty());
    }

    #[test]
    fn the_flash_loan_rule_needs_a_price_move_and_profit_above_two_percent() {
        let rule = FlashLoanRule::default();
        // Borrow 1,000 of token 1, dump into pool A, buy back on pool B: +250 − premium 0.9.
        let swaps = vec![
            leg(1, 9, 0xA7, 0xA7, 1, 1000.0, 2, 400.0),
            leg(1, 9, 0xA7, 0xA7, 2, 400.0, 1, 1250.0),
        ];
        let moves = [PriceMove {
            pool: addr(0xAA),
            before: 2.0,
            after: 1.2,
        }];
        let loan = Loan {
            tx_hash: tx(9),
            initiator: addr(0xA7),
            asset: addr(1),
            amount: 1000.0,
            premium: 0.9,
        };
        let hit = flash_loan_attack(&rule, &loan, &swaps, &moves).expect("attack");
        assert!((hit.profit - 249.1).abs() < 1e-9);
        assert!((hit.max_price_move - 0.4).abs() < 1e-12);
        // Profit 1%: an arbitrage, not an attack.
        let mut small = swaps.clone();
        small[1].amount_out = 1010.0;
        assert!(flash_loan_attack(&rule, &loan, &small, &moves).is_none());
        // No price moved: no attack.
        let calm = [PriceMove {
            pool: addr(0xAA),
            before: 2.0,
            after: 1.99,
        }];
        assert!(flash_loan_attack(&rule, &loan, &swaps, &calm).is_none());
    }

    #[test]
    fn a_drain_is_reported_once_per_episode_with_its_largest_loss() {
        let s = |block, r0, r1| ReserveState {
            block,
            reserve0: r0,
            reserve1: r1,
        };
        let history = [
            s(1, 100.0, 100.0),
            s(2, 101.0, 99.0),
            s(3, 40.0, 99.5),
            s(4, 9.0, 99.5),
            s(50, 9.5, 98.0),
        ];
        let found = drains(addr(1), &history, 5, 0.5);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].from_block, found[0].to_block), (2, 4));
        assert!((found[0].share_lost - (1.0 - 9.0 / 101.0)).abs() < 1e-12);
        // Normal trading (±1%) never alerts.
        let calm: Vec<_> = (0..100)
            .map(|b| s(b, 100.0 + (b % 3) as f64, 100.0 - (b % 2) as f64))
            .collect();
        assert!(drains(addr(1), &calm, 5, 0.5).is_empty());
    }

    #[test]
    fn alerts_sharing_an_actor_or_a_transaction_merge_across_chains_within_the_window() {
        let alert =
            |id: &str, kind: &str, sev: &str, chain: u64, at: i64, addr: &[&str], txs: &[&str]| {
                AlertRef {
                    id: id.into(),
                    kind: kind.parse().expect("a kind"),
                    severity: sev.parse().expect("a severity"),
                    chain_id: chain,
                    at,
                    addresses: addr.iter().map(|a| a.to_string()).collect(),
                    tx_hashes: txs.iter().map(|t| t.to_string()).collect(),
                }
            };
        let alerts = vec![
            alert("a", "POOL_ANOMALY", "MEDIUM", 1, 0, &["0xbad"], &["0x1"]),
            // Same actor on another chain, 10 minutes later.
            alert(
                "b",
                "FLASH_LOAN_ATTACK",
                "HIGH",
                137,
                600,
                &["0xbad"],
                &["0x2"],
            ),
            // Shares b's transaction: joins through it.
            alert("c", "LIQUIDITY_DRAIN", "HIGH", 137, 601, &[], &["0x2"]),
            // Unrelated actor.
            alert("d", "SANDWICH", "LOW", 1, 700, &["0xbot"], &["0x3", "0x4"]),
            // The same actor, but two days later: outside the window.
            alert("e", "SANDWICH", "LOW", 1, 172_800, &["0xbad"], &["0x5"]),
        ];
        let incidents = correlate(&alerts, 3600);
        assert_eq!(incidents.len(), 3, "{incidents:?}");
        let big = incidents.iter().find(|i| i.id == "a").expect("incident a");
        assert_eq!(big.alert_ids, vec!["a", "b", "c"]);
        assert_eq!(big.chain_ids, vec![1, 137]);
        assert_eq!(big.stages, vec!["preparation", "exploitation"]);
        assert_eq!(
            big.severity,
            Severity::Critical,
            "HIGH raised a level for combined kinds"
        );
        assert_eq!((big.first_at, big.last_at), (0, 601));
        let lone = incidents.iter().find(|i| i.id == "d").expect("incident d");
        assert_eq!((lone.severity, lone.alert_ids.len()), (Severity::Low, 1));
    }

    #[test]
    fn kinds_and_severities_keep_their_stored_names_and_order() {
        for kind in AlertKind::ALL {
            assert_eq!(kind.as_str().parse::<AlertKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("serialises"),
                serde_json::json!(kind.as_str())
            );
        }
        assert_eq!(AlertKind::FlashLoanAttack.as_str(), "FLASH_LOAN_ATTACK");
        assert!("flash_loan_attack".parse::<AlertKind>().is_err());
        for severity in Severity::ALL {
            assert_eq!(severity.as_str().parse::<Severity>(), Ok(severity));
        }
        assert!(Severity::Low < Severity::Medium && Severity::High < Severity::Critical);
        assert_eq!(Severity::High.raised(), Severity::Critical);
        assert_eq!(Severity::Critical.raised(), Severity::Critical);
        assert_eq!(
            serde_json::from_str::<Severity>("\"MEDIUM\"").expect("parses"),
            Severity::Medium
        );
    }

    #[test]
    fn the_liquidation_bonus_identity() {
        // 1,000 USDC covered at $1 with a 5% bonus seizes 0.5 ETH at $2,100.
        let e = liquidation_bonus_error(0.5, 2100.0, 1000.0, 1.0, 1.05).expect("inputs");
        assert!(e < 1e-12, "{e}");
        let off = liquidation_bonus_error(0.5, 2100.0, 1000.0, 1.0, 1.10).expect("inputs");
        assert!((off - (1.05f64 / 1.10 - 1.0).abs()).abs() < 1e-12);
        assert!(liquidation_bonus_error(0.0, 2100.0, 1000.0, 1.0, 1.05).is_none());
    }
}
