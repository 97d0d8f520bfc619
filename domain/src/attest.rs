//! Signed attestations: an [`Attestation`] counts only when its issuer signed it with EIP-712
//! and the issuer is on the scorer's allow-list.
//!
//! The signed message is the typed struct [`eip712::Attestation`] under the domain
//! `{name: "chainfold", version: "1", chainId: <the attestation's chain>}` (no verifying
//! contract: attestations live off-chain, on `chainfold.attestations.v1`). EIP-712 has no
//! floats or timestamps, so the value travels as `valueMicros` (the value × 10⁶, which must be
//! exact: at most six decimals) and the times as Unix seconds (which must be whole). The JSON
//! message carries `issuer` as the signer's 0x address and `signature` as 65 bytes `r ‖ s ‖ v`
//! in 0x hex, as `eth_signTypedData_v4` returns it. A wallet such as MetaMask or any EIP-712
//! library signs the same bytes, so an issuer needs nothing from chainfold to sign.
//!
//! [`Attestation::verify`] says why one does not count: unsigned, a malformed signature, a
//! signature that recovers to someone other than the named issuer (a forged or altered message),
//! or an issuer not on the allow-list. The scorer dead-letters each with that reason.

use alloy_primitives::{Address, Signature, B256};
use alloy_sol_types::SolStruct;

use crate::credit::Attestation;

/// The EIP-712 types. Kept in their own module: the struct's name is part of the signed type
/// string (`Attestation(uint64 chainId,…)`).
pub mod eip712 {
    alloy_sol_types::sol! {
        /// What an issuer signs.
        struct Attestation {
            uint64 chainId;
            address wallet;
            string kind;
            int64 valueMicros;
            address issuer;
            uint64 issuedAt;
            uint64 expiresAt;
        }
    }
}

/// The EIP-712 domain of attestations for `chain_id`.
pub fn domain(chain_id: u64) -> alloy_sol_types::Eip712Domain {
    alloy_sol_types::eip712_domain! {
        name: "chainfold",
        version: "1",
        chain_id: chain_id,
    }
}

impl Attestation {
    /// The issuer as an address (signed attestations name their signer).
    pub fn issuer_address(&self) -> Result<Address, String> {
        self.issuer.parse::<Address>().map_err(|_| {
            format!(
                "issuer must be the signer's 0x address, got {:?}",
                self.issuer
            )
        })
    }

    /// The typed struct the issuer signs, or why this attestation cannot be one.
    pub fn typed(&self) -> Result<eip712::Attestation, String> {
        let micros = self.value * 1e6;
        let value_micros = micros.round();
        if !micros.is_finite() || value_micros / 1e6 != self.value {
            return Err(format!(
                "value {} has more than six decimals (signed as micros)",
                self.value
            ));
        }
        let seconds = |t: chrono::DateTime<chrono::Utc>, what: &str| {
            if t.timestamp_subsec_nanos() != 0 || t.timestamp() < 0 {
                return Err(format!("{what} must be a whole second after 1970, got {t}"));
            }
            Ok(t.timestamp() as u64)
        };
        Ok(eip712::Attestation {
            chainId: self.chain_id,
            wallet: self.wallet,
            kind: self.kind.clone(),
            valueMicros: value_micros as i64,
            issuer: self.issuer_address()?,
            issuedAt: seconds(self.issued_at, "issued_at")?,
            expiresAt: seconds(self.expires_at, "expires_at")?,
        })
    }

    /// The EIP-712 hash the issuer signs.
    pub fn signing_hash(&self) -> Result<B256, String> {
        Ok(self.typed()?.eip712_signing_hash(&domain(self.chain_id)))
    }

    /// The address that signed this attestation, if it carries a signature by its issuer.
    pub fn signer(&self) -> Result<Address, String> {
        let Some(signature) = self.signature.as_deref() else {
            return Err(
                "unsigned attestation (an EIP-712 signature by its issuer is required)".into(),
            );
        };
        let bytes = alloy_primitives::hex::decode(signature)
            .map_err(|e| format!("malformed signature: {e}"))?;
        let signature =
            Signature::from_raw(&bytes).map_err(|e| format!("malformed signature: {e}"))?;
        let hash = self.signing_hash()?;
        let signer = signature
            .recover_address_from_prehash(&hash)
            .map_err(|e| format!("malformed signature: {e}"))?;
        let issuer = self.issuer_address()?;
        if signer != issuer {
            return Err(format!(
                "signature does not recover to the issuer {issuer:#x} (it recovers to {signer:#x}): forged or altered"
            ));
        }
        Ok(signer)
    }

    /// Whether this attestation counts: well formed ([`Attestation::validate`]), signed by its
    /// issuer, and the issuer on `allowed`.
    pub fn verify(&self, allowed: &[Address]) -> Result<(), String> {
        self.validate()?;
        let signer = self.signer()?;
        if !allowed.contains(&signer) {
            return Err(format!(
                "issuer {signer:#x} is not on the allow-list of attestation issuers (--attestation-issuers)"
            ));
        }
        Ok(())
    }

    /// This attestation signed with `key`: `issuer` becomes the key's address and `signature`
    /// its EIP-712 signature (what an issuer's tooling does; tests and the demo use it).
    pub fn signed_by(mut self, key: &k256::ecdsa::SigningKey) -> Result<Attestation, String> {
        self.issuer = format!("{:#x}", Address::from_private_key(key));
        let hash = self.signing_hash()?;
        let (signature, recovery) = key
            .sign_prehash_recoverable(hash.as_slice())
            .map_err(|e| format!("could not sign: {e}"))?;
        let signature = Signature::from((signature, recovery));
        self.signature = Some(alloy_primitives::hex::encode_prefixed(signature.as_bytes()));
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn key(byte: u8) -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[byte; 32]).expect("a valid secret key")
    }

    fn attestation() -> Attestation {
        Attestation {
            schema_version: crate::SCHEMA_VERSION,
            chain_id: 137,
            wallet: Address::repeat_byte(1),
            kind: "kyc".into(),
            value: 0.25,
            issuer: String::new(),
            issued_at: DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
            expires_at: DateTime::from_timestamp(1_700_086_400, 0).expect("time"),
            signature: None,
        }
    }

    #[test]
    fn a_signed_attestation_from_an_allowed_issuer_counts() {
        let signed = attestation().signed_by(&key(7)).expect("signs");
        let issuer = Address::from_private_key(&key(7));
        assert_eq!(signed.issuer, format!("{issuer:#x}"));
        assert_eq!(signed.signer(), Ok(issuer));
        assert_eq!(signed.verify(&[issuer]), Ok(()));
        // Through JSON, as it travels on the topic.
        let back: Attestation =
            serde_json::from_str(&serde_json::to_string(&signed).expect("json")).expect("parse");
        assert_eq!(back.verify(&[issuer]), Ok(()));
    }

    #[test]
    fn unsigned_unknown_forged_and_altered_ones_do_not() {
        let issuer = Address::from_private_key(&key(7));
        let unsigned = Attestation {
            issuer: format!("{issuer:#x}"),
            ..attestation()
        };
        assert!(unsigned
            .verify(&[issuer])
            .expect_err("refused")
            .contains("unsigned"));

        let stranger = attestation().signed_by(&key(8)).expect("signs");
        assert!(stranger
            .verify(&[issuer])
            .expect_err("refused")
            .contains("not on the allow-list"));

        // Signed by 8, claiming to be 7.
        let forged = Attestation {
            issuer: format!("{issuer:#x}"),
            ..stranger.clone()
        };
        assert!(forged
            .verify(&[issuer])
            .expect_err("refused")
            .contains("does not recover to the issuer"));

        // Every signed field matters: a changed value, wallet, time or chain fails.
        let good = attestation().signed_by(&key(7)).expect("signs");
        for altered in [
            Attestation {
                value: 1.0,
                ..good.clone()
            },
            Attestation {
                wallet: Address::repeat_byte(2),
                ..good.clone()
            },
            Attestation {
                expires_at: good.expires_at + chrono::Duration::days(365),
                ..good.clone()
            },
            Attestation {
                chain_id: 1,
                ..good.clone()
            },
            Attestation {
                kind: "bureau".into(),
                ..good.clone()
            },
        ] {
            assert!(
                altered
                    .verify(&[issuer])
                    .expect_err("refused")
                    .contains("does not recover"),
                "{altered:?}"
            );
        }

        let garbage = Attestation {
            signature: Some("0x1234".into()),
            ..good.clone()
        };
        assert!(garbage
            .verify(&[issuer])
            .expect_err("refused")
            .contains("malformed signature"));
    }

    #[test]
    fn values_and_times_must_be_exactly_signable() {
        let fine = Attestation {
            value: -0.123456,
            ..attestation()
        };
        assert!(fine.signed_by(&key(7)).is_ok());
        let too_fine = Attestation {
            value: 0.1234567,
            ..attestation()
        };
        assert!(too_fine
            .signed_by(&key(7))
            .expect_err("refused")
            .contains("six decimals"));
        let fraction = Attestation {
            issued_at: DateTime::from_timestamp(1_700_000_000, 5).expect("time"),
            ..attestation()
        };
        assert!(fraction
            .signed_by(&key(7))
            .expect_err("refused")
            .contains("whole second"));
    }

    /// The hash is EIP-712's, not an ad-hoc one: the type string and the domain are the
    /// standard encodings, so any EIP-712 signer produces the same signature.
    #[test]
    fn the_signed_type_is_the_documented_one() {
        assert_eq!(
            eip712::Attestation::eip712_encode_type(),
            "Attestation(uint64 chainId,address wallet,string kind,int64 valueMicros,address issuer,uint64 issuedAt,uint64 expiresAt)"
        );
        let a = Attestation {
            issuer: format!("{:#x}", Address::from_private_key(&key(7))),
            ..attestation()
        };
        let typed = a.typed().expect("typed");
        let expected = alloy_primitives::keccak256(
            [
                &[0x19, 0x01][..],
                domain(137).separator().as_slice(),
                typed.eip712_hash_struct().as_slice(),
            ]
            .concat(),
        );
        assert_eq!(a.signing_hash(), Ok(expected));
    }
}
