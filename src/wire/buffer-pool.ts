// BufferPool: buffers of one size, taken and given back, so a server sending many large answers does
// not allocate a new one each time. Why: Buffers live outside V8's heap, and their growth is what set
// off most of the server's garbage collections during check-outs (docs/performance.md, cold check-out).
// Holds at most `keep` free buffers; a buffer given back beyond that is left to the garbage collector.
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(readonly size: number, private readonly keep: number) {}

  /** A buffer of `size` bytes (contents undefined). */
  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.size);
  }

  /** The caller is done with `buf` (taken from this pool) and every view of it. */
  give(buf: Buffer): void {
    if (buf.length === this.size && this.free.length < this.keep) this.free.push(buf);
  }
}
