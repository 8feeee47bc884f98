// Numbered, append-only schema migrations of the server database. Never edit a shipped entry: add one.
// Each says why it exists. Applied by the one runner (src/sql) in order, one transaction each; it
// records each version and refuses a database newer than this list. Versions 1-12 are SQLite history;
// PostgreSQL starts from POSTGRES_BASELINE (the schema as of 12) and every later step gives both forms.
// A migration that must compute rows from encoded data does it in `fill`, in the same transaction.
import { decodeManifest, decodePersona, type Migration, type MigrationSet } from '../src/index.js';
import type { Db } from './db.js';
import { POSTGRES_BASELINE } from './sql/postgres-baseline.js';

/**
 * Migration 9's fill: every block a user's data already names, outside the image their desktop derives
 * from (those are granted through the image), and every chunk of their persona versions.
 */
function grantExistingBlocks(db: Db): void {
  const ins = db.prepare('INSERT OR IGNORE INTO user_blocks (user_id, block_id) VALUES (?, ?)');
  const manifestIds = (id: string): string[] => decodeManifest((db.prepare('SELECT encoded FROM manifests WHERE id = ?').get(id) as { encoded: Buffer }).encoded).uniqueIds();
  const desktops = db.prepare(`SELECT d.id, d.user_id, iv.manifest_id AS image_manifest FROM desktops d
    JOIN image_versions iv ON iv.image_id = d.image_id AND iv.version = d.image_version`).all() as Array<{ id: number; user_id: number; image_manifest: string }>;
  for (const d of desktops) {
    const image = new Set(manifestIds(d.image_manifest));
    const own = db.prepare(`SELECT manifest_id FROM desktop_versions WHERE desktop_id = ? UNION SELECT manifest_id FROM restore_points WHERE desktop_id = ?`).all(d.id, d.id) as Array<{ manifest_id: string }>;
    for (const { manifest_id } of own) {
      if (manifest_id === d.image_manifest) continue;
      for (const id of manifestIds(manifest_id)) if (!image.has(id)) ins.run(d.user_id, id);
    }
  }
  const snapshots = db.prepare(`SELECT user_id, snapshot_id FROM persona_versions
    UNION SELECT d.user_id, r.persona_snapshot_id FROM restore_points r JOIN desktops d ON d.id = r.desktop_id WHERE r.persona_snapshot_id IS NOT NULL`).all() as Array<{ user_id: number; snapshot_id: string }>;
  for (const { user_id, snapshot_id } of snapshots) {
    const snap = decodePersona((db.prepare('SELECT encoded FROM persona_snapshots WHERE id = ?').get(snapshot_id) as { encoded: Buffer }).encoded);
    for (const f of snap.files) for (const c of f.chunks) ins.run(user_id, c);
  }
}

/** Migration 16's table: the same text on both engines. */
const RECOMPOSE_TABLE = `
      CREATE TABLE desktop_recompose (
        desktop_id INTEGER PRIMARY KEY REFERENCES desktops(id),
        kind TEXT NOT NULL CHECK (kind IN ('refresh', 'recompose')),
        image_id INTEGER NOT NULL REFERENCES images(id),
        image_version INTEGER,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL
      );
`;

/** Migration 15's tables, for both engines. */
function releaseTables(big: string, blob: string): string {
  return `
      CREATE TABLE client_releases (
        version TEXT PRIMARY KEY,
        file_name TEXT NOT NULL,
        size ${big} NOT NULL,
        sha512 TEXT NOT NULL,
        bytes ${blob} NOT NULL,
        published_at TEXT NOT NULL,
        published_by TEXT NOT NULL
      );
      CREATE TABLE client_release_channel (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        serial ${big} NOT NULL,
        pinned_version TEXT,
        changed_at TEXT NOT NULL
      );
      INSERT INTO client_release_channel (id, serial, changed_at) VALUES (1, 0, '1970-01-01T00:00:00.000Z');
  `;
}

/** Migration 13's tables: one text for both engines, which differ in 64-bit and identity columns only. */
function gcTables(big: string, id: string): string {
  return `
      -- When the server last told a client it may rely on this block without sending it (a "missing"
      -- answer through the user's own blocks, an upload that found it stored): GC spares it for a grace period after.
      ALTER TABLE blocks ADD COLUMN seen_at TEXT;
      -- One row per upload in progress (checkout blocks, persona chunks, image publish), renewed while it runs.
      CREATE TABLE ingest_leases (
        id TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        started_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
      );
      -- The one garbage collector at a time (across instances): who, in which phase, until when.
      CREATE TABLE gc_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT,
        phase TEXT CHECK (phase IN ('mark', 'sweep')),
        started_at TEXT,
        expires_at TEXT
      );
      INSERT INTO gc_state (id) VALUES (1);
      -- Blocks whose index row GC removed, waiting for the sweep to delete their bytes.
      CREATE TABLE gc_condemned (
        block_id TEXT PRIMARY KEY,
        stored_size ${big} NOT NULL,
        condemned_at TEXT NOT NULL
      );
      CREATE TABLE gc_runs (
        id ${id},
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        by_whom TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        report TEXT NOT NULL
      );
    `;
}

/** Migration 18: the same text on both engines (TEXT and INTEGER mean the same there). */
const BOOT_TRACE_TABLE = `
  CREATE TABLE boot_traces (
    image_id INTEGER NOT NULL REFERENCES images(id),
    image_version INTEGER NOT NULL,
    blocks TEXT NOT NULL,
    block_count INTEGER NOT NULL,
    submitted_by INTEGER NOT NULL REFERENCES users(id),
    submitted_at TEXT NOT NULL,
    PRIMARY KEY (image_id, image_version)
  );
`;

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    why: 'The foundation: users with hashed tokens, content-addressed manifests and a block index, images and desktops as chains of versions, and checkouts with at most one active per desktop.',
    sqlite: `
      CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
      );
      -- Tokens are stored as SHA-256 of the secret: a copy of the database grants nothing.
      CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        token_hash BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
      );
      -- Manifests are small (32 bytes a block) and immutable: kept in the database, keyed by SHA-256.
      CREATE TABLE manifests (
        id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        block_size INTEGER NOT NULL,
        block_count INTEGER NOT NULL,
        data_bytes INTEGER NOT NULL,
        encoded BLOB NOT NULL,
        created_at TEXT NOT NULL
      );
      -- The index of verified blocks in the block store. A row is written only after its file is
      -- durable, so a row always means the block can be read.
      CREATE TABLE blocks (
        id TEXT PRIMARY KEY,
        plain_size INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        created_at TEXT NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
      );
      CREATE TABLE image_versions (
        image_id INTEGER NOT NULL REFERENCES images(id),
        version INTEGER NOT NULL,
        manifest_id TEXT NOT NULL REFERENCES manifests(id),
        created_at TEXT NOT NULL,
        PRIMARY KEY (image_id, version)
      );
      CREATE TABLE desktops (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        user_id INTEGER NOT NULL REFERENCES users(id),
        image_id INTEGER NOT NULL REFERENCES images(id),
        image_version INTEGER NOT NULL,
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
      );
      CREATE TABLE desktop_versions (
        desktop_id INTEGER NOT NULL REFERENCES desktops(id),
        version INTEGER NOT NULL,
        manifest_id TEXT NOT NULL REFERENCES manifests(id),
        checkout_id TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (desktop_id, version)
      );
      CREATE TABLE checkouts (
        id TEXT PRIMARY KEY,
        desktop_id INTEGER NOT NULL REFERENCES desktops(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        device TEXT NOT NULL,
        device_name TEXT NOT NULL,
        base_version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'committed', 'discarded')),
        started_at TEXT NOT NULL,
        ended_at TEXT,
        committed_version INTEGER,
        committed_manifest TEXT
      );
      -- One active checkout per desktop, enforced by the database, not by a race-prone read.
      CREATE UNIQUE INDEX checkouts_one_active ON checkouts(desktop_id) WHERE state = 'active';
    `,
  },
  {
    version: 2,
    why: 'The persona: each user has a chain of immutable persona versions (content-addressed snapshots of the profile tree and registry, file contents as chunks in the block store); a checkout records the persona version it started from, so a check-in can merge three ways; each desktop chooses how conflicting edits resolve.',
    sqlite: `
      CREATE TABLE persona_snapshots (
        id TEXT PRIMARY KEY,
        encoded BLOB NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE TABLE persona_versions (
        user_id INTEGER NOT NULL REFERENCES users(id),
        version INTEGER NOT NULL,
        snapshot_id TEXT NOT NULL REFERENCES persona_snapshots(id),
        source TEXT NOT NULL CHECK (source IN ('initial', 'checkin', 'push')),
        device_name TEXT,
        checkout_id TEXT,
        -- JSON merge report when this version merged edits made meanwhile elsewhere; null otherwise
        merge_report TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (user_id, version)
      );
      ALTER TABLE checkouts ADD COLUMN persona_base_version INTEGER;
      ALTER TABLE desktops ADD COLUMN file_policy TEXT NOT NULL DEFAULT 'keep-both'
        CHECK (file_policy IN ('keep-both', 'newest', 'server', 'laptop'));
      ALTER TABLE desktops ADD COLUMN registry_policy TEXT NOT NULL DEFAULT 'newest'
        CHECK (registry_policy IN ('newest', 'server', 'laptop'));
    `,
  },
  {
    version: 3,
    why: 'Fleet control, part 1: each laptop is a device with its own token (stored hashed, listable, revocable); every checkout carries an offline lease (days from the desktop, else the image, else 7) and the last contact and pending bytes its device reported; an append-only audit log of every state change says who, what, when and from where.',
    sqlite: `
      CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_seen_at TEXT,
        last_address TEXT
      );
      ALTER TABLE tokens ADD COLUMN device_id TEXT REFERENCES devices(id);
      ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
      ALTER TABLE checkouts ADD COLUMN lease_expires_at TEXT;
      ALTER TABLE checkouts ADD COLUMN last_contact_at TEXT;
      ALTER TABLE checkouts ADD COLUMN pending_bytes INTEGER;
      ALTER TABLE checkouts ADD COLUMN pending_blocks INTEGER;
      ALTER TABLE desktops ADD COLUMN lease_days REAL;
      ALTER TABLE images ADD COLUMN lease_days REAL;
      CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        device TEXT,
        address TEXT,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT
      );
    `,
  },
  {
    version: 4,
    why: 'Fleet control, part 2: admin requests queued for a device (force check-in, rollback) with their state as the device reports it; a checkout ended by a rollback says so (end_reason), so the device is told at its next contact; per desktop, whether a rollback keeps the laptop copy aside.',
    sqlite: `
      CREATE TABLE admin_requests (
        id INTEGER PRIMARY KEY,
        checkout_id TEXT NOT NULL REFERENCES checkouts(id),
        kind TEXT NOT NULL CHECK (kind IN ('checkin', 'rollback')),
        state TEXT NOT NULL CHECK (state IN ('requested', 'in-progress', 'done', 'failed')),
        requested_by TEXT NOT NULL,
        detail TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
      );
      CREATE INDEX admin_requests_checkout ON admin_requests(checkout_id);
      ALTER TABLE checkouts ADD COLUMN end_reason TEXT;
      ALTER TABLE desktops ADD COLUMN rollback_keeps_local INTEGER NOT NULL DEFAULT 0;
    `,
  },
  {
    version: 5,
    why: 'Offline lease codes: each checkout gets a random secret shared with its laptop at check-out, so an admin can extend a lease with a short code (an HMAC over the checkout, the days and a sequence number) that the laptop checks without the network, read over the phone.',
    sqlite: `
      ALTER TABLE checkouts ADD COLUMN lease_secret BLOB;
      ALTER TABLE checkouts ADD COLUMN lease_code_seq INTEGER NOT NULL DEFAULT 0;
    `,
  },
  {
    version: 6,
    why: 'Replication while checked out: a device sends its changed blocks as a restore point without ending its checkout (a lost laptop loses at most the time since the last one); an admin can make a restore point the desktop\'s next version; per desktop, how often the agent replicates.',
    sqlite: `
      CREATE TABLE restore_points (
        id INTEGER PRIMARY KEY,
        desktop_id INTEGER NOT NULL REFERENCES desktops(id),
        checkout_id TEXT NOT NULL REFERENCES checkouts(id),
        base_version INTEGER NOT NULL,
        manifest_id TEXT NOT NULL REFERENCES manifests(id),
        device_name TEXT NOT NULL,
        blocks_changed INTEGER NOT NULL,
        created_at TEXT NOT NULL
      );
      CREATE INDEX restore_points_desktop ON restore_points(desktop_id);
      ALTER TABLE desktops ADD COLUMN replicate_minutes REAL;
      ALTER TABLE desktop_versions ADD COLUMN restore_point_id INTEGER REFERENCES restore_points(id);
    `,
  },
  {
    version: 7,
    why: 'Restore points carry the persona too: the snapshot of the laptop\'s profile and registry at that moment (content-addressed, its chunks in the block store), made a persona version when the admin restores the point.',
    sqlite: `
      ALTER TABLE restore_points ADD COLUMN persona_snapshot_id TEXT REFERENCES persona_snapshots(id);
    `,
  },
  {
    version: 8,
    why: 'A lease an admin extended (or a lease code granted) is a floor: the device\'s next contact renews from the policy but never to an earlier end than the admin gave.',
    sqlite: `
      ALTER TABLE checkouts ADD COLUMN lease_floor TEXT;
    `,
  },
  {
    version: 9,
    why: 'Blocks are deduplicated across users, but knowing a hash must not let a user read a block: a user may name (in a commit, or learn present through a "missing" query) only a block of the image their desktop derives from, of their checked-out version, or one they have sent themselves (proof of possession) or that their data already held. user_blocks records the last two.',
    sqlite: `
      CREATE TABLE user_blocks (
        user_id INTEGER NOT NULL REFERENCES users(id),
        block_id TEXT NOT NULL,
        PRIMARY KEY (user_id, block_id)
      ) WITHOUT ROWID;
    `,
    fill: grantExistingBlocks,
  },
  {
    version: 10,
    why: 'An admin can put a user\'s persona back to an earlier version (a bad push, a poisoned registry): the restore is a new version, source "restore", naming the version it copies (restored_from). SQLite cannot change a CHECK constraint in place, so the table is rebuilt.',
    sqlite: `
      CREATE TABLE persona_versions_new (
        user_id INTEGER NOT NULL REFERENCES users(id),
        version INTEGER NOT NULL,
        snapshot_id TEXT NOT NULL REFERENCES persona_snapshots(id),
        source TEXT NOT NULL CHECK (source IN ('initial', 'checkin', 'push', 'restore')),
        device_name TEXT,
        checkout_id TEXT,
        merge_report TEXT,
        created_at TEXT NOT NULL,
        restored_from INTEGER,
        PRIMARY KEY (user_id, version)
      );
      INSERT INTO persona_versions_new (user_id, version, snapshot_id, source, device_name, checkout_id, merge_report, created_at)
        SELECT user_id, version, snapshot_id, source, device_name, checkout_id, merge_report, created_at FROM persona_versions;
      DROP TABLE persona_versions;
      ALTER TABLE persona_versions_new RENAME TO persona_versions;
    `,
  },
  {
    version: 11,
    why: 'A lease code carries the lease end itself (the server and the laptop computed it from different clocks and days), and making one no longer moves the server\'s lease: the code is recorded here and applied (as a floor) once the laptop reports it used, at its next contact.',
    sqlite: `
      CREATE TABLE lease_codes (
        checkout_id TEXT NOT NULL REFERENCES checkouts(id),
        seq INTEGER NOT NULL,
        days INTEGER NOT NULL,
        lease_expires_at TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        used_at TEXT,
        PRIMARY KEY (checkout_id, seq)
      );
    `,
  },
  {
    version: 12,
    why: 'Encryption at rest: laptops encrypt their copy under a data key per copy, sealed to the server\'s escrow public key (DATA/escrow/escrow.pub) so an admin can recover it. Policy per image and per desktop (NULL: the desktop follows its image, the image the default, required). Desktops that exist now are set to off explicitly: their laptops already hold plaintext copies made by a carryon that cannot encrypt, and a required policy would stop them from checking out again until every laptop is updated; an admin turns it on per desktop. A checkout records the requirement it started under (existing ones: not required), so changing the policy never strands a copy already handed out; checkout_escrows keeps each checkout\'s sealed key and its key check (never the key).',
    sqlite: `
      ALTER TABLE images ADD COLUMN encryption TEXT CHECK (encryption IN ('required', 'off'));
      ALTER TABLE desktops ADD COLUMN encryption TEXT CHECK (encryption IN ('required', 'off'));
      UPDATE desktops SET encryption = 'off';
      ALTER TABLE checkouts ADD COLUMN encryption_required INTEGER;
      UPDATE checkouts SET encryption_required = 0;
      CREATE TABLE checkout_escrows (
        checkout_id TEXT PRIMARY KEY REFERENCES checkouts(id) ON DELETE CASCADE,
        -- the data key sealed to the escrow public key (src/crypto sealToEscrow, aad = checkout id)
        sealed BLOB NOT NULL,
        -- keyCheck(data key): 16 hex, public; tells the right recovery code from another copy's
        key_check TEXT NOT NULL,
        created_at TEXT NOT NULL
      );
    `,
  },
  {
    version: 13,
    why: 'Garbage collection (server/gc.ts): deleted desktops, expired restore points and failed uploads leave blocks nobody references. A collector marks what live versions, images, restore points and personas reference, removes the index rows of the rest once they are older than a grace period and unseen for as long (blocks.seen_at: the last time a client was told it may rely on one), then deletes their bytes while no upload is in progress (ingest_leases; gc_state makes uploads wait during that short sweep). The first migration written for both engines.',
    sqlite: gcTables('INTEGER', 'INTEGER PRIMARY KEY'),
    postgres: gcTables('BIGINT', 'INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY'),
  },
  {
    version: 14,
    why: "A persona holds HKEY_CURRENT_USER alone, and not all of it: per desktop, an admin lists the registry keys it carries (registry_include, a JSON list of key patterns relative to HKEY_CURRENT_USER; NULL: all of it) and the keys it leaves out (registry_exclude; NULL: the default list of known noise, src/persona/registry/scope.ts, so desktops that exist now get it without a rewrite). The server drops keys outside them from every check-in and push; laptops learn the lists with the desktop's info. Stored persona versions are not rewritten (they are content-addressed and may be referenced by restore points): keys outside HKEY_CURRENT_USER or the lists in an old version are dropped the next time a commit merges it.",
    sqlite: `
      ALTER TABLE desktops ADD COLUMN registry_include TEXT;
      ALTER TABLE desktops ADD COLUMN registry_exclude TEXT;
    `,
    postgres: `
      ALTER TABLE desktops ADD COLUMN registry_include TEXT;
      ALTER TABLE desktops ADD COLUMN registry_exclude TEXT;
    `,
  },
  {
    version: 15,
    why: "Client updates served by the server (issue 14): an admin publishes a release of the carryon client (the npm pack tarball, kept here whole: releases are a few MB and every instance must serve the same bytes) and may pin the version laptops should run. The channel row's serial grows with every publish, pin and unpin; it is signed into the feed so a laptop can refuse an older feed replayed to it.",
    sqlite: releaseTables('INTEGER', 'BLOB'),
    postgres: releaseTables('BIGINT', 'BYTEA'),
  },
  {
    version: 16,
    why: "Golden images over time (issue 15): an admin refreshes a desktop (back to its image's newest version) or recomposes it (onto another image version); the user's persona is kept, the disk's previous version stays in desktop_versions (restorable). A desktop that is checked out at that moment is recomposed when its checkout ends (after the check-in's changes are in, as their own version): the request waits here, one per desktop (a later one replaces it). image_version NULL: the image's newest when applied (a refresh).",
    sqlite: RECOMPOSE_TABLE,
    postgres: RECOMPOSE_TABLE,
  },
  {
    version: 17,
    why: "Image versions have a retention (issue 15): an admin keeps the newest N versions of an image (images.keep_versions; NULL, the default: all). The garbage collector removes older versions no desktop is on and no queued refresh or recompose names, then their blocks nothing else names (server/image-retention.ts).",
    sqlite: 'ALTER TABLE images ADD COLUMN keep_versions INTEGER;',
    postgres: 'ALTER TABLE images ADD COLUMN keep_versions INTEGER;',
  },
  {
    version: 18,
    why: "Streamed boots read ahead by what the image's earlier boots read (issue 13): a laptop's `carryon serve` reports the blocks its VM first read, in order, and the server keeps the latest such trace per image version (one row, replaced; blocks as a JSON list of indices, at most 65,536, each below the version's block count). Only users with a desktop on that version read or replace it. Removed with its image version (image retention).",
    sqlite: BOOT_TRACE_TABLE,
    postgres: BOOT_TRACE_TABLE,
  },
];

export const SERVER_SCHEMA: MigrationSet = {
  what: 'server database',
  migrations: MIGRATIONS,
  baselines: [{ dialect: 'postgres', version: 12, sql: POSTGRES_BASELINE }],
};
