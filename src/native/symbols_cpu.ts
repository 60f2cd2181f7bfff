export const cpu_symbols = {} as const satisfies Deno.ForeignLibraryInterface;
