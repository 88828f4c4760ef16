package store

import (
	"path/filepath"
	"sync"
)

const (
	lockFileName    = ".lock"
	currentFileName = "current.xl"
	tempPrefix      = ".tmp-"
)

// FileStore keeps records as files:
//
//	<root>/<domain-uuid>/                      directory, mode 0700
//	<root>/<domain-uuid>/snapshotdata-<n>.xl   one record per snapshot, 0600
//	<root>/<domain-uuid>/current.xl            current = "<name>", 0600
//	<root>/<domain-uuid>/.lock                 the domain's flock(2) lock
//	<root>/<domain-uuid>/.spare-*              empty files the next writes fill
//
// <n> is the snapshot name escaped by RecordFileName. Writes go to a
// ".tmp-*" file in the same directory (or, under the domain's lock, to a
// ".spare-*" file created ahead of time, so that a write does not wait
// for a file's creation), which is fsynced, renamed over the
// record and followed by an fsync of the directory, so a reader or a crash
// sees the old or the new record. At most three spares stay between
// operations; the next Lock adopts the empty ones this user owns and
// removes anything else under that prefix. Temporary files left by a
// crash are ignored by List and removed by the next Lock of the domain (a
// Put made at that moment without holding the lock fails cleanly: its
// rename finds no temporary file). Readers (Get, List, Current) take no
// lock.
//
// The store refuses to trust anything a different user could have planted
// or changed: a root or domain directory, record, current.xl or .lock that
// is writable by group or others, a symbolic link, or a file of the wrong
// type makes the operation fail with an error wrapping ErrUnsafePermissions
// that names the path; one owned by a user other than the process's
// effective user (root included) fails with ErrForeignOwner (which wraps
// ErrUnsafePermissions), naming the path and the owner's uid. Nothing is
// changed. Files are opened with O_NOFOLLOW and O_NONBLOCK (a FIFO planted
// in the directory cannot block a reader).
//
// A record file that cannot be read affects only itself: Get of it fails,
// List leaves it out and reports it as a *RecordError, and Delete removes
// it (or the symbolic link in its place, never the link's target) without
// reading it, so a damaged record never blocks the domain's other
// snapshots.
//
// FileStore works on Linux, macOS and FreeBSD (it needs openat, renameat,
// unlinkat and flock; its tests run on Linux). On other systems
// NewFileStore fails with an error wrapping ErrUnsupported.
//
// FileStore is safe for concurrent use; several FileStores and several
// processes may share a root.
type FileStore struct {
	root   string
	mu     sync.Mutex
	locks  map[string]*domainLock
	spares map[string]*sparePool // per domain, while this store holds its lock
}

type domainLock struct {
	ch   chan struct{}
	refs int
}

var (
	_ Store     = (*FileStore)(nil)
	_ Committer = (*FileStore)(nil)
)

// Root returns the store's root directory.
func (s *FileStore) Root() string { return s.root }

// Dir returns the directory of the domain's records, where an engine may
// also keep the domain's memory files. It does not create it.
func (s *FileStore) Dir(domain string) (string, error) {
	if err := ValidateDomain(domain); err != nil {
		return "", err
	}
	return filepath.Join(s.root, domain), nil
}

// spare is an empty file in a domain's directory, open for writing.
type spare struct {
	name string
	fd   int
}

// sparePool is the spares of one hold of a domain's lock (a new pool
// for each hold).
type sparePool struct {
	files []spare
	// writers counts the writes filling a spare taken from the pool,
	// until they have renamed it.
	writers sync.WaitGroup
	// filled is nil until the hold's first write starts the goroutine
	// that creates spares, and closed when that goroutine ends.
	filled chan struct{}
}
