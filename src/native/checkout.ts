/**
 * Where this copy of ngpt lives (a local checkout, or a URL when mod.ts was imported over HTTP)
 * and the native library's file name on this platform.
 * @module
 */

/** The root of the checkout this module belongs to: file: for a clone, http(s): for a URL import. */
export const CHECKOUT_URL: URL = new URL("../../", import.meta.url);

/** libngpt.so, libngpt.dylib or ngpt.dll. */
export function native_lib_filename(): string {
  if (Deno.build.os === "windows") return "ngpt.dll";
  if (Deno.build.os === "darwin") return "libngpt.dylib";
  return "libngpt.so";
}
