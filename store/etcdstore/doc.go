// Package etcdstore keeps vmsnap's snapshot metadata in etcd v3, so that
// every host of a fleet shares one catalog and one lock per domain: a
// domain's snapshots follow it when it migrates, a fleet controller lists
// or watches every domain's snapshots without visiting the hosts, two
// hosts never operate on one domain at once, and a host that dies while
// holding a domain's lock releases it when its lease expires.
//
// Store implements store.Store and passes the storetest conformance suite.
// It lives in its own Go module (github.com/vmsnap/vmsnap/store/etcdstore)
// so that importers of vmsnap who do not use etcd never download its
// client.
//
// # Keys
//
//	<prefix>/<domain-uuid>/snapshots/<name>   the record: the xl text store.FileStore writes
//	<prefix>/<domain-uuid>/current            current = "<name>", as the file store's current.xl
//	<prefix>/<domain-uuid>/lock/<lease-id>    the domain lock's holder and waiters
//
// so `etcdctl get --print-value-only <prefix>/<uuid>/snapshots/<name>`
// shows a record as `cat` shows the file store's. Names and UUIDs follow
// store.ValidateName and store.ValidateDomain.
//
// # Lock and fencing
//
// Lock grants a lease of Options.LockTTL, puts a key under the domain's
// lock prefix attached to it, and waits until that key is the oldest
// there; the lease is renewed while the lock is held and revoked by
// unlock. A holder that dies stops renewing, and its lease (with its key)
// expires within the TTL. Every write made while a Store holds the
// domain's lock is one etcd transaction conditioned on the lock key still
// existing at the revision that created it, so a holder whose lease
// expired (a paused process, a host cut off from etcd) has its writes
// refused with ErrLockLost: it can never write over the next holder's
// work, and the intent it left is settled by that holder's reconcile.
//
// # Failures
//
// Each request is bounded by Options.RequestTimeout: an etcd that is
// stopped or unreachable gives an error wrapping ErrUnavailable, never a
// wait without end. A lock waited for while etcd is unreachable fails
// once its lease can no longer be renewed.
//
// # Fleet
//
// Watch (the Watcher capability, found by type assertion) reports the
// changes of one domain or of all; ListAll reads every domain's records in
// one range read. ParseURL, OpenURL and OpenSpec open a store from an
// etcd://HOST:PORT[,HOST:PORT...]/PREFIX URL, with TLS.
package etcdstore
