"""Pipeline stages, one module each: `REQUIRES` (stages whose output it reads) and `run(ctx, out)`."""
