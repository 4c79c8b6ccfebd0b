//! Tests of the MVCC layer through its public face: etcd's rules one by one (`etcd_rules`),
//! a model-based property test (`model`, `prop`), concurrent readers (`readers`), and a
//! memory measurement of the key index (`memory`, ignored by default), and the lease table
//! (`leases`).

mod etcd_rules;
mod harness;
mod leases;
mod memory;
mod model;
mod prop;
mod readers;
