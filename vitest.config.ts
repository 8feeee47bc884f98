import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    // e2e suites start servers and build fixtures in their hooks.
    hookTimeout: 180_000,
    pool: 'forks',
    // expect.poll waits for what a page or a process shows after its own refresh (the admin console's is
    // 2 s); 1 s, the default, fails on a loaded 2-core machine. A bound on waiting, not a timing assertion.
    expect: { poll: { timeout: 15_000 } },
  },
});
