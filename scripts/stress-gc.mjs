// Preloaded into the server that `npm run stress` starts (with --expose-gc): SIGUSR2 runs a full garbage
// collection, so the run's RSS and heap figures compare live memory, not whatever garbage V8 has not yet collected
// on an idle process (it collects lazily; 20 s of abuse leaves 40+ MB of it).
process.on("SIGUSR2", () => globalThis.gc?.());
