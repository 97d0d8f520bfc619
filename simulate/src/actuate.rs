//! `chainfold actuate`: applies lending decisions on-chain. A consumer group on
//! `chainfold.decisions.v1` calls the fixture lending pool's `setCreditLine(wallet, line,
//! collateralRatioBps, decisionId)` for every decision of its chain (REJECT = a line of 0: no
//! borrowing), waits for the receipt and records the transaction hash and block beside the
//! decision in Postgres (`credit_decision.tx_hash`). A decision already applied is skipped, so a
//! restart replays nothing twice; a reverted call is recorded as `actuation_error` and the
//! stream goes on; a record that is not a decision goes to the topic's DLQ with the reason.
//!
//! Off by default outside the simulator: it refuses a node whose chain id is not the
//! simulator's (31337) unless `--live` is given. Transactions are sent from an account the node
//! holds unlocked (anvil's dev accounts): this is a fixture actuator, not a key manager.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use anyhow::Context as _;
use chainfold_domain::decision::DecisionRecord;
use chainfold_domain::messages::Alert;
use chainfold_domain::risk::AlertKind;
use chainfold_domain::topics;
use chainfold_platform::config::{KafkaArgs, PostgresArgs};
use chainfold_platform::{dlq, kafka};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;

use crate::contracts::FixtureLendingPool;

/// The simulator's chain id: the only chain `actuate` sends to without `--live`.
pub const SIMULATOR_CHAIN_ID: u64 = 31337;

/// `chainfold actuate` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ActuateConfig {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// JSON-RPC URL of the node the lending pool lives on.
    #[arg(
        long = "rpc-url",
        env = "CHAINFOLD_ACTUATOR_RPC_URL",
        default_value = "http://127.0.0.1:8545"
    )]
    pub rpc_url: String,
    /// Address of the fixture lending pool (`chainfold simulate` prints it).
    #[arg(long = "lending-pool", env = "CHAINFOLD_ACTUATOR_LENDING_POOL")]
    pub lending_pool: Address,
    /// Unlocked account the transactions are sent from (the pool's owner or risk admin);
    /// defaults to the node's first account.
    #[arg(long = "from", env = "CHAINFOLD_ACTUATOR_FROM")]
    pub from: Option<Address>,
    /// Consumer group of the actuator.
    #[arg(
        long = "group",
        env = "CHAINFOLD_ACTUATOR_GROUP",
        default_value = "chainfold-actuator"
    )]
    pub group: String,
    /// Allow a chain other than the simulator's (31337). Off by default: decisions act on the
    /// local fixture chain only.
    #[arg(long = "live")]
    pub live: bool,
    /// Also execute liquidity-shortage recommendations from `chainfold.risk.v1`: supply the
    /// recommended amount of the reserve to the lending pool (minted by the fixture token).
    /// Off by default ("self-healing" liquidity on the simulator).
    #[arg(long = "heal")]
    pub heal: bool,
}

impl ActuateConfig {
    pub fn new(
        kafka: KafkaArgs,
        postgres: PostgresArgs,
        rpc_url: String,
        lending_pool: Address,
    ) -> Self {
        ActuateConfig {
            kafka,
            postgres,
            rpc_url,
            lending_pool,
            from: None,
            group: "chainfold-actuator".into(),
            live: false,
            heal: false,
        }
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ActOutcome {
    pub received: u64,
    /// Decisions applied on-chain (transaction mined and recorded).
    pub applied: u64,
    /// Decisions of another chain, or already applied.
    pub skipped: u64,
    /// Calls the chain refused (recorded as `actuation_error`).
    pub failed: u64,
    /// Records that were not decisions (dead-lettered).
    pub dead_lettered: u64,
    /// Shortage recommendations executed on-chain (`--heal`).
    pub healed: u64,
}

/// A running actuator.
pub struct Actuator {
    consumer: StreamConsumer,
    producer: FutureProducer,
    pool: PgPool,
    provider: DynProvider,
    chain_id: u64,
    from: Address,
    config: ActuateConfig,
    topic: String,
    risk_topic: String,
}

impl std::fmt::Debug for Actuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actuator")
            .field("chain_id", &self.chain_id)
            .field("lending_pool", &self.config.lending_pool)
            .finish()
    }
}

impl Actuator {
    /// Connects to the node (checking its chain id and that the pool is deployed), Postgres
    /// and Kafka, and subscribes.
    pub async fn build(config: ActuateConfig) -> anyhow::Result<Actuator> {
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .connect_http(config.rpc_url.parse().context("invalid --rpc-url")?)
            .erased();
        let chain_id = provider
            .get_chain_id()
            .await
            .context("the actuator's node is not reachable")?;
        anyhow::ensure!(
            chain_id == SIMULATOR_CHAIN_ID || config.live,
            "actuate is off outside the simulator: the node is chain {chain_id}, not {SIMULATOR_CHAIN_ID}; pass --live to send transactions there"
        );
        let code = provider.get_code_at(config.lending_pool).await?;
        anyhow::ensure!(
            !code.is_empty(),
            "no contract at --lending-pool {:#x} on chain {chain_id}",
            config.lending_pool
        );
        let from = match config.from {
            Some(from) => from,
            None => *provider
                .get_accounts()
                .await?
                .first()
                .context("the node holds no unlocked account: pass --from")?,
        };
        let pool = chainfold_platform::postgres::connect_and_migrate(&config.postgres).await?;
        let topic = format!("{}{}", config.kafka.topic_prefix, topics::DECISIONS);
        let risk_topic = format!("{}{}", config.kafka.topic_prefix, topics::RISK);
        kafka::ensure_topics(
            &config.kafka,
            &[
                topic.clone(),
                topics::dlq(&topic),
                risk_topic.clone(),
                topics::dlq(&risk_topic),
            ],
        )
        .await?;
        let consumer: StreamConsumer = kafka::consumer_config(&config.kafka, &config.group)
            .create()
            .context("could not create Kafka consumer")?;
        let mut subscription = vec![topic.as_str()];
        if config.heal {
            subscription.push(risk_topic.as_str());
        }
        consumer
            .subscribe(&subscription)
            .context("could not subscribe to the decisions topic")?;
        let producer = kafka::producer(&config.kafka)?;
        tracing::info!(chain_id, pool = %config.lending_pool, from = %from, "actuator subscribed");
        Ok(Actuator {
            consumer,
            producer,
            pool,
            provider,
            chain_id,
            from,
            config,
            topic,
            risk_topic,
        })
    }

    /// Receives the messages available (waiting at most `idle` for the first), applies them in
    /// order and commits.
    pub async fn process_batch(&mut self, idle: Duration) -> anyhow::Result<ActOutcome> {
        let mut outcome = ActOutcome::default();
        let mut commit: std::collections::BTreeMap<(String, i32), i64> = Default::default();
        let mut wait = idle;
        while outcome.received < 500 {
            let message = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(err)) => return Err(err).context("could not read from Kafka"),
                Err(_) => break,
            };
            wait = Duration::from_millis(20);
            outcome.received += 1;
            let (partition, offset) = (message.partition(), message.offset());
            let topic = message.topic().to_owned();
            commit.insert((topic.clone(), partition), offset);
            let payload = message.payload().unwrap_or_default();
            if topic == self.risk_topic {
                match serde_json::from_slice::<Alert>(payload) {
                    Ok(alert) => {
                        if self.heal(&alert).await? {
                            outcome.healed += 1;
                        } else {
                            outcome.skipped += 1;
                        }
                    }
                    Err(err) => {
                        let reason = format!("not an alert: {err}");
                        let origin = format!("{topic}/{partition}/{offset}");
                        dlq::send(
                            &self.producer,
                            &dlq::DeadLetter {
                                topic: &topic,
                                stage: "actuate",
                                reason: &reason,
                                origin: &origin,
                                key: message.key(),
                                payload,
                            },
                        )
                        .await?;
                        outcome.dead_lettered += 1;
                    }
                }
                continue;
            }
            let record = match serde_json::from_slice::<DecisionRecord>(payload) {
                Ok(r) => r,
                Err(err) => {
                    let reason = format!("not a decision record: {err}");
                    let origin = format!("{}/{partition}/{offset}", self.topic);
                    dlq::send(
                        &self.producer,
                        &dlq::DeadLetter {
                            topic: &self.topic,
                            stage: "actuate",
                            reason: &reason,
                            origin: &origin,
                            key: message.key(),
                            payload,
                        },
                    )
                    .await?;
                    tracing::warn!(%reason, %origin, "dead-lettered");
                    outcome.dead_lettered += 1;
                    continue;
                }
            };
            match self.apply(&record).await? {
                Applied::Done => outcome.applied += 1,
                Applied::Skipped => outcome.skipped += 1,
                Applied::Failed => outcome.failed += 1,
            }
        }
        if !commit.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in &commit {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
                    .context("commit list")?;
            }
            self.consumer
                .commit(&tpl, CommitMode::Sync)
                .context("could not commit Kafka offsets")?;
        }
        Ok(outcome)
    }

    /// Executes a shortage alert's provisioning recommendation: mints the recommended amount
    /// of the reserve token to the actuator's account (the fixture token is the simulator's
    /// treasury), approves the pool and deposits it. Once per alert (`risk_action`); `false`
    /// when the alert is not an applicable recommendation, was executed already, or failed
    /// (the failure is stored with the alert).
    async fn heal(&self, alert: &Alert) -> anyhow::Result<bool> {
        let recommendation = &alert.evidence["recommendation"];
        let applicable = alert.kind == AlertKind::LiquidityShortage
            && alert.chain_id == self.chain_id
            && recommendation["action"] == "provision";
        let (id, Some(reserve), Some(amount)) = (
            alert.id.as_str(),
            recommendation["reserve"].as_str(),
            recommendation["amount"].as_f64(),
        ) else {
            return Ok(false);
        };
        if !applicable || amount <= 0.0 {
            return Ok(false);
        }
        if chainfold_store::alerts::action_tx(&self.pool, id)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let result = self.provision(reserve, amount).await;
        let (tx, block, error) = match result {
            Ok((tx, block)) => (Some(format!("{tx:#x}")), block.map(|b| b as i64), None),
            Err(err) => (
                None,
                None,
                Some(chainfold_ingest::rpc::config::scrub(
                    &format!("{err:#}"),
                    &self.config.rpc_url,
                )),
            ),
        };
        chainfold_store::alerts::record_provision(
            &self.pool,
            &chainfold_store::alerts::Action {
                alert_id: id,
                chain_id: self.chain_id as i64,
                reserve,
                amount,
                tx_hash: tx.clone(),
                tx_block: block,
                error: error.clone(),
            },
        )
        .await?;
        match error {
            None => {
                tracing::info!(alert = id, reserve, amount, tx = ?tx, "shortage recommendation executed");
                Ok(true)
            }
            Some(error) => {
                tracing::warn!(alert = id, %error, "shortage recommendation failed");
                Ok(false)
            }
        }
    }

    /// Mint, approve, deposit `amount` whole tokens of `reserve`; the deposit's tx and block.
    async fn provision(&self, reserve: &str, amount: f64) -> anyhow::Result<(B256, Option<u64>)> {
        let token_address: Address = reserve
            .parse()
            .with_context(|| format!("recommendation names a bad reserve {reserve:?}"))?;
        let token = crate::contracts::FixtureToken::new(token_address, &self.provider);
        let decimals = token.decimals().call().await?;
        let units = crate::contracts::units(amount, decimals) + U256::from(1u8);
        let pool = FixtureLendingPool::new(self.config.lending_pool, &self.provider);
        let mut last = None;
        for tx in [
            token
                .mint(self.from, units)
                .from(self.from)
                .into_transaction_request(),
            token
                .approve(self.config.lending_pool, units)
                .from(self.from)
                .into_transaction_request(),
            pool.deposit(token_address, units, self.from, 0)
                .from(self.from)
                .into_transaction_request(),
        ] {
            let receipt = self
                .provider
                .send_transaction(tx)
                .await?
                .get_receipt()
                .await?;
            anyhow::ensure!(
                receipt.status(),
                "transaction {} reverted",
                receipt.transaction_hash
            );
            last = Some((receipt.transaction_hash, receipt.block_number));
        }
        last.context("no transaction sent")
    }

    async fn apply(&self, record: &DecisionRecord) -> anyhow::Result<Applied> {
        if record.chain_id != self.chain_id {
            return Ok(Applied::Skipped);
        }
        let applied = chainfold_store::decisions::applied_tx(&self.pool, &record.id).await?;
        match applied {
            Some(Some(_)) => return Ok(Applied::Skipped),
            Some(None) => {}
            None => {
                tracing::warn!(id = %record.id, "decision not in this database: not applied");
                return Ok(Applied::Skipped);
            }
        }
        let wallet: Address = record
            .wallet
            .parse()
            .with_context(|| format!("decision {} has a bad wallet", record.id))?;
        let id: B256 = record
            .id
            .parse()
            .with_context(|| format!("decision id {} is not 32 bytes", record.id))?;
        let (line, ratio) = record.on_chain_terms();
        let pool = FixtureLendingPool::new(self.config.lending_pool, &self.provider);
        let sent = pool
            .setCreditLine(wallet, U256::from(line), U256::from(ratio), id)
            .from(self.from)
            .send()
            .await;
        let result = match sent {
            Ok(pending) => pending
                .get_receipt()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|r| {
                    anyhow::ensure!(r.status(), "transaction {} reverted", r.transaction_hash);
                    Ok(r)
                }),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        };
        match result {
            Ok(receipt) => {
                chainfold_store::decisions::mark_applied(
                    &self.pool,
                    &record.id,
                    &format!("{:#x}", receipt.transaction_hash),
                    receipt.block_number.map(|b| b as i64),
                )
                .await?;
                tracing::info!(id = %record.id, wallet = %record.wallet, tx = %receipt.transaction_hash, "decision applied on-chain");
                Ok(Applied::Done)
            }
            Err(err) => {
                let message =
                    chainfold_ingest::rpc::config::scrub(&err.to_string(), &self.config.rpc_url);
                chainfold_store::decisions::mark_failed(&self.pool, &record.id, &message).await?;
                tracing::warn!(id = %record.id, error = %message, "decision not applied");
                Ok(Applied::Failed)
            }
        }
    }

    /// Applies decisions until a batch arrives empty after `idle` (tests). The first wait is at
    /// least 30 s: joining the group comes first.
    pub async fn run_until_idle(&mut self, idle: Duration) -> anyhow::Result<ActOutcome> {
        chainfold_platform::worker::run_until_idle(self, idle).await
    }

    /// Applies decisions until `shutdown` resolves (the batch in hand finishes first).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        chainfold_platform::worker::run_until_stopped(
            &mut self,
            Duration::from_millis(500),
            chainfold_platform::worker::SHUTDOWN_GRACE,
            shutdown,
        )
        .await
    }
}

impl chainfold_platform::worker::BatchWorker for Actuator {
    type Outcome = ActOutcome;

    fn process_batch(
        &mut self,
        wait: Duration,
    ) -> impl std::future::Future<Output = anyhow::Result<ActOutcome>> + Send {
        Actuator::process_batch(self, wait)
    }

    fn received(outcome: &ActOutcome) -> u64 {
        outcome.received
    }

    fn add(total: &mut ActOutcome, o: &ActOutcome) {
        total.received += o.received;
        total.applied += o.applied;
        total.skipped += o.skipped;
        total.failed += o.failed;
        total.dead_lettered += o.dead_lettered;
        total.healed += o.healed;
    }

    async fn recover(&mut self, err: anyhow::Error, _backoff: &mut Duration) -> anyhow::Result<()> {
        // The actuator's offsets are the Kafka group's, and its consumer has read past the
        // failed batch: it stops, and its restart resumes at the last commit (each decision and
        // alert is applied once, by `credit_decision` / `risk_action`).
        Err(err)
    }
}

enum Applied {
    Done,
    Skipped,
    Failed,
}
