export const cuda_symbols = {} as const satisfies Deno.ForeignLibraryInterface;
