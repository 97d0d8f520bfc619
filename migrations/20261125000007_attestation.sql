-- Off-chain attestations (`chainfold.attestations.v1`) as the scorer received them; they count
-- in a wallet's score only while valid (issued_at <= score time < expires_at).
CREATE TABLE attestation (
    id         TEXT COLLATE "C" PRIMARY KEY,
    chain_id   BIGINT      NOT NULL,
    wallet     TEXT COLLATE "C" NOT NULL,
    kind       TEXT        NOT NULL,
    value      DOUBLE PRECISION NOT NULL CHECK (value BETWEEN -1 AND 1),
    issuer     TEXT        NOT NULL,
    issued_at  TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL CHECK (expires_at > issued_at),
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT  NOT NULL
);
CREATE INDEX attestation_wallet_idx ON attestation (chain_id, wallet, issued_at);
