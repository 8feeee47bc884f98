// Every fuzz target, by group (the test files in test/fuzz/ follow the groups).
import type { TargetSpec } from '../harness.js';
import { blockPatchTarget, codecTarget, manifestTarget } from './binary.js';
import { journalTarget } from './journal.js';
import { leaseCodeTarget } from './lease.js';
import { nbdTarget } from './nbd.js';
import { personaDeltaTarget, personaSnapshotTarget, regFileTarget } from './persona.js';
import { rdiffDeltaTarget, rdiffSignatureTarget } from './rdiff.js';
import { tarTarget } from './tar.js';
import { jsonTargets, wireNamesTarget } from './wire.js';

export const TARGET_GROUPS: Record<string, TargetSpec[]> = {
  binary: [manifestTarget, blockPatchTarget, codecTarget],
  wire: [wireNamesTarget, ...jsonTargets],
  lease: [leaseCodeTarget],
  tar: [tarTarget],
  persona: [regFileTarget, personaSnapshotTarget, personaDeltaTarget],
  rdiff: [rdiffDeltaTarget, rdiffSignatureTarget],
  journal: [journalTarget],
  nbd: [nbdTarget],
};

export const ALL_TARGETS: TargetSpec[] = Object.values(TARGET_GROUPS).flat();

export function targetNamed(name: string): TargetSpec | undefined {
  return ALL_TARGETS.find((t) => t.name === name);
}
