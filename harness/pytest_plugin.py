"""pytest plugin: options that mirror `lvol-storm run`, and the fixtures target/rpc/bdev/lvstore."""
