import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    // e2e suites start servers and build fixtures in their hooks.
    hookTimeout: 180_000,
    pool: 'forks',
  },
});
