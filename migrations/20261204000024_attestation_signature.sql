-- Attestations count only when signed (EIP-712) by an issuer on the scorer's allow-list
-- (`--attestation-issuers`); the signature is stored beside each so an analyst can verify it
-- again. Rows stored before signatures were required have none.
ALTER TABLE attestation ADD COLUMN signature TEXT;
COMMENT ON COLUMN attestation.signature IS
    'The issuer''s EIP-712 signature (65 bytes r||s||v, 0x hex) over the attestation; see domain/src/attest.rs';
