"""The storm's data path: blocks written and read over NVMe/TCP while the RPC workers change the lvols
(`config`), their stamps (`stamp`), the model of which write each block must show (`images`), the exports
(`export`), the I/O lanes and their judgement (`lanes`) and the streamed I/O history (`history`)."""
