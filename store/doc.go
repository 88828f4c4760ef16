// Package store keeps snapshot metadata: one record per snapshot of a
// domain, written so that it survives crashes, concurrent callers and
// hostile names, and stays readable by people and xl tooling.
//
// Store is the small interface an engine works against. FileStore is the
// default implementation, laid out as proposed for xl:
//
//	<root>/<domain-uuid>/snapshotdata-<name>.xl
//
// with DefaultRoot /var/lib/xen/snapshots, directories 0700 and files 0600.
// MemStore keeps the same records in memory. The storetest package holds
// the conformance suite every implementation passes.
//
// Backends may offer optional capabilities, detected with a type
// assertion: Committer stores a finished record and makes it current in
// one durable step (the Commit function falls back to Put then SetCurrent
// for a Store without it).
//
// # Records
//
// A Record mirrors libxl_vm_snapshot (name, creation time, memory file,
// state, disks) and adds what an engine needs: description, parent, a
// Status for intents (creating, ok, deleting), the domain config as opaque
// bytes, per-disk details (node, image, kind, id, tag, overlay, vm-state
// size, date, vm clock, removed), labels, downtime and a format version.
// Files are in xl config syntax (see Marshal for the keys and the quoting);
// any byte string round-trips, and keys this version does not know are kept
// in Record.Extra and written back.
//
// # Names
//
// Snapshot names are checked by ValidateName and domain UUIDs by
// ValidateDomain before anything is read or written. RecordFileName maps an
// accepted name to its file name injectively and never outside the
// domain's directory.
//
// # Safety
//
// Every write is atomic (temporary file, fsync, rename, fsync of the
// directory). Store.Lock gives one operation per domain at a time across
// goroutines and processes (flock), and honours the context's deadline with
// an error wrapping ErrBusy. Damaged, unsafe or foreign files are reported
// with errors naming the file (*CorruptError, ErrUnsafePermissions,
// ErrForeignOwner for a file another user owns) and left alone. A record
// that cannot be read affects only itself: List returns the others and one
// *RecordError per bad record, and Delete removes it without reading it.
//
// FileStore runs on Linux, macOS and FreeBSD; elsewhere NewFileStore fails
// with ErrUnsupported and MemStore or a Store of the toolstack's own is
// used.
//
// # Tree
//
// Parent links form a tree per domain: BuildTree answers children, roots,
// leaves, descendants, ancestors and reports dangling parents and cycles;
// RemoveAndReparent deletes a snapshot and gives its children its parent.
// Each domain has at most one current snapshot (Store.Current), kept in its
// own file so that moving it rewrites no record.
package store
