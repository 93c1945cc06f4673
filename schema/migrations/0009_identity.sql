-- Fleet identity for an appliance's whole life (issue 14): one-time enrolment tokens, the
-- certificates the ingest issues, revocation, the appliance's lifecycle, operators' API tokens
-- and the audit log of what they changed. Keyed by serial text, not appliances.id: an appliance
-- is enrolled, shelved or retired before (or without) ever reporting.

-- A token is stored as the SHA-256 of its secret only: a leaked table enrols nobody.
CREATE TABLE enrolment_tokens (
    token_sha256 bytea       PRIMARY KEY,
    serial       text        NOT NULL,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_by   text        NOT NULL,
    -- Set once, in the same transaction that records the certificate it paid for.
    used_at      timestamptz,
    used_cert_sha256 bytea
);
CREATE INDEX enrolment_tokens_serial ON enrolment_tokens (serial);

-- Every certificate the ingest signed (enrolment, renewal): what the CRL, renewal and the
-- appliance page need. Certificates issued offline (`ca issue-appliance`) are in
-- `certificates` once they deliver a report, by digest only.
CREATE TABLE issued_certificates (
    sha256        bytea       PRIMARY KEY,
    serial        text        NOT NULL,
    -- The certificate's serial number, lower-case hex: what a CRL lists.
    cert_serial   text        NOT NULL,
    -- SHA-256 of the issuing CA's certificate (DER).
    issuer_sha256 bytea       NOT NULL,
    not_before    timestamptz NOT NULL,
    not_after     timestamptz NOT NULL,
    issued_at     timestamptz NOT NULL,
    via           text        NOT NULL CHECK (via IN ('enrol', 'renew')),
    -- The certificate that asked for this one (renewal).
    renewed_from  bytea
);
CREATE INDEX issued_certificates_serial ON issued_certificates (serial, issued_at);

-- Revoked certificates, by digest. `cert_serial`/`issuer_sha256` are known for certificates the
-- ingest issued and go into the CRL.
CREATE TABLE revoked_certificates (
    sha256        bytea       PRIMARY KEY,
    serial        text,
    cert_serial   text,
    issuer_sha256 bytea,
    revoked_at    timestamptz NOT NULL,
    revoked_by    text        NOT NULL,
    reason        text        NOT NULL DEFAULT ''
);

-- A serial revoked as a whole: every certificate for it issued at or before `revoked_at` is
-- refused, including ones issued offline that the ingest never saw. A certificate issued after
-- (a new enrolment of a refurbished appliance) is not.
CREATE TABLE revoked_serials (
    serial     text        PRIMARY KEY,
    revoked_at timestamptz NOT NULL,
    revoked_by text        NOT NULL,
    reason     text        NOT NULL DEFAULT ''
);

-- The appliance's lifecycle. No row: active.
CREATE TABLE appliance_lifecycle (
    serial     text        PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('active', 'expected_offline', 'retired')),
    -- expected_offline: until when no `appliance_silent` alert is raised.
    until      timestamptz,
    note       text        NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL,
    changed_by text        NOT NULL
);

-- Operators' API tokens, by the SHA-256 of their secret.
CREATE TABLE api_tokens (
    id           integer     GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    role         text        NOT NULL CHECK (role IN ('read', 'admin')),
    token_sha256 bytea       NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    created_by   text        NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Every change an operator (or a CLI on the operations host) made: who, what, to what, when.
CREATE TABLE audit_log (
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL,
    actor  text        NOT NULL,
    action text        NOT NULL,
    target text        NOT NULL DEFAULT '',
    detail jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target, at);
