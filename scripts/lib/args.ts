// Command-line options of the benches: each flag with a way to take its value, in order.
export interface Arg {
  flag: string;
  /** The next argument, as this flag's value; throws with the usage text when there is none. */
  value(): string;
}

export function* readArgs(argv: readonly string[], usage: string): Generator<Arg> {
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    yield {
      flag,
      value: () => {
        const v = argv[++i];
        if (v === undefined) throw new Error(`${flag} needs a value\n${usage}`);
        return v;
      },
    };
  }
}
