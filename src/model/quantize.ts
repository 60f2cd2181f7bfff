/**
 * Weight-only int8 quantization (W8A16), done on the host at load time: each output row of a
 * linear layer's (out_features, in_features) weight keeps its own scale, max |w| / 127, and its
 * values round to the nearest of -127..127 times that scale. Symmetric, so no zero point; the
 * matmul multiplies a row's int8 dot product by its scale before the bias.
 * @module
 */

/** An int8 weight and its per-row scales. */
export interface QuantizedRows {
  /** (rows, cols) values in -127..127. */
  q: Int8Array;
  /** (rows) scales: row r's weight is q[r, :] * scale[r]. */
  scale: Float32Array;
}

/** Quantizes a (rows, cols) row-major weight, one scale per row (an all-zero row gets scale 0). */
export function quantize_rows(w: Float32Array, rows: number, cols: number): QuantizedRows {
  if (w.length !== rows * cols) {
    throw new RangeError(`quantize_rows: ${w.length} values do not make ${rows} x ${cols}`);
  }
  const q = new Int8Array(rows * cols), scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let max = 0;
    for (let c = 0; c < cols; c++) {
      const v = w[o + c];
      if (!Number.isFinite(v)) throw new RangeError(`quantize_rows: row ${r}, column ${c} is ${v}`);
      max = Math.max(max, Math.abs(v));
    }
    if (max === 0) continue;
    const s = max / 127;
    scale[r] = s;
    for (let c = 0; c < cols; c++) q[o + c] = Math.max(-127, Math.min(127, Math.round(w[o + c] / s)));
  }
  return { q, scale };
}

/** (rows, cols) row-major values of a weight stored (cols, rows), i.e. its transpose. */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let c = 0; c < cols; c++) {
    for (let r = 0; r < rows; r++) out[r * cols + c] = w[c * rows + r];
  }
  return out;
}
