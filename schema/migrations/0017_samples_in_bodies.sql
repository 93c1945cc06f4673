-- Storage (issue 17): the drive, filesystem and NIC samples live only in the report bodies.
--
-- Every value these tables held is in the report's body (zstd with the fleet's dictionary,
-- about 315 bytes for the whole report), while a row per drive, filesystem and NIC cost a
-- 24-byte tuple header, a line pointer and an index entry before its first value: 842 bytes a
-- report of the 1,699 measured (docs/benchmarks.md). Charts, the API, the drive page and the
-- rules' history read the bodies (`ingest/src/storage/readings.rs`); reliability reads
-- `drives.predictive` (migration 16, which filled it from these tables first).
--
-- Dropping a partitioned table drops its partitions: the space comes back at once. An ingest
-- older than this migration writes these tables and fails its batches once they are gone:
-- upgrade every replica together (collectors keep their reports spooled and send them again).
-- Safe to run again.
DROP TABLE IF EXISTS drive_samples;
DROP TABLE IF EXISTS filesystem_samples;
DROP TABLE IF EXISTS nic_samples;
