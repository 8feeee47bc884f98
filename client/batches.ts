// Split a list into consecutive batches bounded by item count and by summed size.
export function* batchesOf<T>(items: T[], sizeOf: (t: T) => number, maxBytes: number, maxCount = Infinity): Generator<T[]> {
  let cur: T[] = [];
  let bytes = 0;
  for (const it of items) {
    cur.push(it);
    bytes += sizeOf(it);
    if (cur.length >= maxCount || bytes >= maxBytes) {
      yield cur;
      cur = [];
      bytes = 0;
    }
  }
  if (cur.length) yield cur;
}
