// Metrics: what the service counts for Prometheus (`GET /metrics`, text exposition format 0.0.4).
// Owns: request and byte counters, failures by error code, commit (check-in) durations as a histogram,
// and gauges read from the database at scrape time (active checkouts, expired leases, stored bytes).
// Names only, never user, desktop or token values: a scrape reveals no identities.
import type { DiskSpace } from '../src/index.js';
import type { FleetMeta } from './fleet-meta.js';
import type { SharingService } from './sharing.js';
import type { Meta } from './meta.js';

const COMMIT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export class Metrics {
  private readonly requests = new Map<string, number>();
  private readonly failures = new Map<string, number>();
  bytesIn = 0;
  bytesOut = 0;
  private readonly commitBuckets = new Array<number>(COMMIT_BUCKETS.length).fill(0);
  private commitCount = 0;
  private commitSum = 0;

  request(method: string, route: string, status: number): void {
    const k = `method="${method}",route="${route}",status="${status}"`;
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
  }

  failure(code: string): void {
    this.failures.set(code, (this.failures.get(code) ?? 0) + 1);
  }

  commit(seconds: number): void {
    this.commitCount++;
    this.commitSum += seconds;
    COMMIT_BUCKETS.forEach((b, i) => {
      if (seconds <= b) this.commitBuckets[i]!++;
    });
  }

  /** `liveIn`/`liveOut`: bytes so far on connections still open. */
  async render(meta: Meta, fleet: FleetMeta, liveIn = 0, liveOut = 0, space: DiskSpace | null = null, sharing: SharingService | null = null): Promise<string> {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, lines: string[]): void => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
    };
    const s = await meta.stats();
    const active = await fleet.activeCheckouts();
    const now = Date.now();
    metric('carryon_active_checkouts', 'gauge', 'Checkouts currently held by a device.', [`carryon_active_checkouts ${active.length}`]);
    metric('carryon_expired_leases', 'gauge', 'Active checkouts whose offline lease has run out.', [`carryon_expired_leases ${active.filter((c) => c.leaseExpiresAt && Date.parse(c.leaseExpiresAt) < now).length}`]);
    metric('carryon_pending_bytes', 'gauge', 'Bytes the devices last reported as not yet sent, summed.', [`carryon_pending_bytes ${active.reduce((n, c) => n + (c.pendingBytes ?? 0), 0)}`]);
    metric('carryon_stored_bytes', 'gauge', 'Bytes in the block store (compressed).', [`carryon_stored_bytes ${s.storedBytes}`]);
    metric('carryon_desktops', 'gauge', 'Desktops.', [`carryon_desktops ${s.desktops}`]);
    if (sharing) {
      // Totals only (no image or desktop names on this unauthenticated route); recomputed at most once a minute.
      const t = (await sharing.report(60_000)).totals;
      metric('carryon_logical_bytes', 'gauge', "Data bytes of every image's newest version and every desktop's current disk as separate full copies.", [`carryon_logical_bytes ${t.logicalBytes}`]);
      metric('carryon_sharing_saving_ratio', 'gauge', '1 - stored / logical bytes: what linked clones, deduplication and compression save.', [`carryon_sharing_saving_ratio ${t.saving}`]);
      metric('carryon_desktop_bytes', 'gauge', "Desktops' current disks by where their blocks come from (plaintext bytes).", [
        `carryon_desktop_bytes{held="shared-with-image"} ${t.sharedWithImagesBytes}`,
        `carryon_desktop_bytes{held="unique-to-desktop"} ${t.uniqueToDesktopsBytes}`,
        `carryon_desktop_bytes{held="restore-points-only"} ${t.restorePointsOnlyBytes}`,
      ]);
    }
    if (space) {
      metric('carryon_data_free_bytes', 'gauge', 'Bytes free on the file system of the data folder (uploads are refused below 64 MiB).', [`carryon_data_free_bytes ${space.free}`]);
      metric('carryon_data_size_bytes', 'gauge', 'Size of the file system of the data folder.', [`carryon_data_size_bytes ${space.total}`]);
    }
    metric('carryon_http_requests_total', 'counter', 'HTTP requests by method, route and status.', [...this.requests].map(([k, v]) => `carryon_http_requests_total{${k}} ${v}`));
    metric('carryon_http_received_bytes_total', 'counter', 'Bytes received over HTTP (headers and bodies).', [`carryon_http_received_bytes_total ${this.bytesIn + liveIn}`]);
    metric('carryon_http_sent_bytes_total', 'counter', 'Bytes sent over HTTP (headers and bodies).', [`carryon_http_sent_bytes_total ${this.bytesOut + liveOut}`]);
    metric('carryon_failures_total', 'counter', 'Failed requests by error code.', [...this.failures].map(([k, v]) => `carryon_failures_total{code="${k}"} ${v}`));
    metric('carryon_checkin_commit_seconds', 'histogram', 'Time to commit a check-in (validate the manifest, then one transaction).', [
      ...COMMIT_BUCKETS.map((b, i) => `carryon_checkin_commit_seconds_bucket{le="${b}"} ${this.commitBuckets[i]}`),
      `carryon_checkin_commit_seconds_bucket{le="+Inf"} ${this.commitCount}`,
      `carryon_checkin_commit_seconds_sum ${this.commitSum}`,
      `carryon_checkin_commit_seconds_count ${this.commitCount}`,
    ]);
    return `${out.join('\n')}\n`;
  }
}
