"""Adapters to engines that run lightpipe at scale (`lightpipe.integrations.ray`). Nothing here
is imported by `import lightpipe`; each adapter imports its engine only when used."""
