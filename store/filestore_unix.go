//go:build linux || darwin || freebsd

package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NewFileStore opens (creating it with mode 0700 if needed) the store
// rooted at root; "" means DefaultRoot. The root must be a directory that
// is owned by the process's effective user and not writable by group or
// others; otherwise the error wraps ErrUnsafePermissions (ErrForeignOwner
// for the owner).
func NewFileStore(root string) (*FileStore, error) {
	if root == "" {
		root = DefaultRoot
	}
	root = filepath.Clean(root)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("store: creating root: %w", err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("store: root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("store: root %s: not a directory: %w", root, ErrUnsafePermissions)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("store: root %s: mode %04o is writable by group or others (chmod go-w): %w", root, fi.Mode().Perm(), ErrUnsafePermissions)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if err := checkOwner("root "+root, uint32(st.Uid)); err != nil {
			return nil, err
		}
	}
	return &FileStore{root: root}, nil
}

// Lock implements Store with flock(2) on <domain dir>/.lock, polled with a
// short backoff (1 to 16 ms) so that ctx is honoured, behind an in-process
// queue per domain. Once held, it removes temporary files that an earlier
// crash left behind and adopts the spare files an earlier holder left (see
// FileStore); unlock waits for the writes that filled one.
func (s *FileStore) Lock(ctx context.Context, domain string) (func() error, error) {
	if err := ValidateDomain(domain); err != nil {
		return nil, err
	}
	lockPath := filepath.Join(s.root, domain, lockFileName)
	busy := func(err error) error {
		return fmt.Errorf("store: domain %s: lock %s: %w: %w", domain, lockPath, ErrBusy, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, busy(err)
	}
	dl := s.ref(domain)
	select {
	case dl.ch <- struct{}{}:
	case <-ctx.Done():
		s.unref(domain, dl)
		return nil, busy(ctx.Err())
	}
	release := func() {
		<-dl.ch
		s.unref(domain, dl)
	}
	dirfd, dir, err := s.openDir(domain, true)
	if err != nil {
		release()
		return nil, err
	}
	defer unix.Close(dirfd)
	fd, err := openat(dirfd, lockFileName, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o600)
	if err != nil {
		release()
		return nil, openError(lockPath, err)
	}
	if _, err := checkFile(fd, dir, lockFileName, false, os.Geteuid()); err != nil {
		unix.Close(fd)
		release()
		return nil, err
	}
	delay := time.Millisecond
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EWOULDBLOCK {
			unix.Close(fd)
			release()
			return nil, fmt.Errorf("store: domain %s: lock %s: %w", domain, lockPath, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			unix.Close(fd)
			release()
			return nil, busy(ctx.Err())
		}
		if delay < 16*time.Millisecond {
			delay *= 2
		}
	}
	s.startSpares(domain, dirfd, dir)
	var (
		once sync.Once
		uerr error
	)
	return func() error {
		once.Do(func() {
			s.stopSpares(domain)
			// Closing the only descriptor of the open file releases the lock.
			if err := unix.Close(fd); err != nil {
				uerr = fmt.Errorf("store: domain %s: unlock %s: %w", domain, lockPath, err)
			}
			release()
		})
		return uerr
	}, nil
}

func (s *FileStore) ref(domain string) *domainLock {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks == nil {
		s.locks = make(map[string]*domainLock)
	}
	dl := s.locks[domain]
	if dl == nil {
		dl = &domainLock{ch: make(chan struct{}, 1)}
		s.locks[domain] = dl
	}
	dl.refs++
	return dl
}

func (s *FileStore) unref(domain string, dl *domainLock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dl.refs--
	if dl.refs == 0 {
		delete(s.locks, domain)
	}
}

// Put implements Store.
func (s *FileStore) Put(ctx context.Context, domain string, r *Record) error {
	return s.put(ctx, domain, r, true)
}

// put is Put, or Stage when durable is false.
func (s *FileStore) put(ctx context.Context, domain string, r *Record, durable bool) error {
	if err := ValidateDomain(domain); err != nil {
		return err
	}
	data, err := Marshal(r)
	if err != nil {
		return fmt.Errorf("store: domain %s: %w", domain, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dirfd, dir, err := s.openDir(domain, true)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := s.writeAtomic(domain, dirfd, dir, RecordFileName(r.Name), data, durable); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, r.Name, err)
	}
	return nil
}

// Stage implements Stager: Put without its two fsyncs. The record file is
// written and renamed into place, so any later read sees it and it
// survives the death of this process; only a crash of the machine before
// the filesystem writes it back can lose it, or leave it empty or torn
// (reported as a *RecordError, like any damaged record).
func (s *FileStore) Stage(ctx context.Context, domain string, r *Record) error {
	return s.put(ctx, domain, r, false)
}

// Get implements Store. It reads exactly one file.
func (s *FileStore) Get(ctx context.Context, domain, name string) (*Record, error) {
	if err := ValidateDomain(domain); err != nil {
		return nil, err
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dirfd, dir, err := s.openDir(domain, false)
	if err != nil {
		return nil, err
	}
	if dirfd < 0 {
		return nil, fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, ErrNotFound)
	}
	defer unix.Close(dirfd)
	fn := RecordFileName(name)
	r, _, err := readRecord(dirfd, dir, fn, nil, os.Geteuid(), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, ErrNotFound)
	}
	if err != nil {
		return nil, &RecordError{Domain: domain, Name: name, Path: dir + "/" + fn, Err: err}
	}
	return r, nil
}

// Delete implements Store. It removes the record's directory entry without
// reading the file, so it also removes a record that cannot be read
// (damaged, too large, owned by another user, a FIFO); a symbolic link in
// its place is removed itself, its target is left alone. A directory in its
// place is refused, naming it.
func (s *FileStore) Delete(ctx context.Context, domain, name string) error {
	if err := ValidateDomain(domain); err != nil {
		return err
	}
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	notFound := fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, ErrNotFound)
	dirfd, dir, err := s.openDir(domain, false)
	if err != nil {
		return err
	}
	if dirfd < 0 {
		return notFound
	}
	defer unix.Close(dirfd)
	fn := RecordFileName(name)
	if exists, err := existsAt(dirfd, dir, fn); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, err)
	} else if !exists {
		return notFound
	}
	// Clear current first: a crash in between leaves no current snapshot
	// rather than a current snapshot that does not exist. A current file
	// that cannot be read is left alone (Current reports it).
	if cur, err := readCurrent(dirfd, dir, os.Geteuid()); err == nil && cur == name {
		if err := removeAt(dirfd, dir, currentFileName); err != nil {
			return fmt.Errorf("store: domain %s: clearing current snapshot %q: %w", domain, name, err)
		}
	}
	if err := removeAt(dirfd, dir, fn); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return notFound
		}
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, err)
	}
	if err := unix.Fsync(dirfd); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, &os.PathError{Op: "fsync", Path: dir, Err: err})
	}
	return nil
}

// Current implements Store.
func (s *FileStore) Current(ctx context.Context, domain string) (string, error) {
	if err := ValidateDomain(domain); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dirfd, dir, err := s.openDir(domain, false)
	if err != nil || dirfd < 0 {
		return "", err
	}
	defer unix.Close(dirfd)
	name, err := readCurrent(dirfd, dir, os.Geteuid())
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("store: domain %s: %w", domain, err)
	}
	return name, nil
}

// SetCurrent implements Store. The current snapshot is kept in its own
// small file, so changing it rewrites no record.
func (s *FileStore) SetCurrent(ctx context.Context, domain, name string) error {
	if err := ValidateDomain(domain); err != nil {
		return err
	}
	if name != "" {
		if err := ValidateName(name); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	notFound := fmt.Errorf("store: domain %s: making snapshot %q current: %w", domain, name, ErrNotFound)
	dirfd, dir, err := s.openDir(domain, false)
	if err != nil {
		return err
	}
	if dirfd < 0 {
		if name == "" {
			return nil
		}
		return notFound
	}
	defer unix.Close(dirfd)
	if name == "" {
		err := removeAt(dirfd, dir, currentFileName)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: domain %s: clearing current snapshot: %w", domain, err)
		}
		if err := unix.Fsync(dirfd); err != nil {
			return fmt.Errorf("store: domain %s: %w", domain, &os.PathError{Op: "fsync", Path: dir, Err: err})
		}
		return nil
	}
	if exists, err := existsAt(dirfd, dir, RecordFileName(name)); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, err)
	} else if !exists {
		return notFound
	}
	if err := s.writeAtomic(domain, dirfd, dir, currentFileName, marshalCurrent(name), true); err != nil {
		return fmt.Errorf("store: domain %s: making snapshot %q current: %w", domain, name, err)
	}
	return nil
}

// Commit implements Committer. Without makeCurrent it is Put. With it,
// the record and current.xl are each written to a temporary file, both
// files are fsynced (at the same time, so that the filesystem can make
// them durable in one journal commit), the record is renamed into place,
// then current.xl, and the directory is fsynced once: three flushes where
// Put then SetCurrent take four.
//
// A crash before the first rename changes nothing (the temporary files
// are removed by the next Lock); between the renames it leaves the record
// stored and current.xl as it was; after both, before the directory
// fsync, either of those or both done. current.xl is renamed second so
// that it never names a record that is not there: this relies on the
// filesystem making the renames of one directory durable in the order
// they were made, as journaling filesystems (ext4, XFS, btrfs) do. Were
// that order lost, current.xl could name the snapshot while its record
// file is still the previous version (for an engine, the intent record
// it wrote before acting), never a missing file, when the record existed
// before the Commit.
func (s *FileStore) Commit(ctx context.Context, domain string, r *Record, makeCurrent bool) error {
	if !makeCurrent {
		return s.Put(ctx, domain, r)
	}
	if err := ValidateDomain(domain); err != nil {
		return err
	}
	data, err := Marshal(r)
	if err != nil {
		return fmt.Errorf("store: domain %s: %w", domain, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dirfd, dir, err := s.openDir(domain, true)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	fn := RecordFileName(r.Name)
	var (
		curTmp  string
		curDone func()
		curErr  error
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		curTmp, curDone, curErr = s.writeTemp(domain, dirfd, dir, currentFileName, marshalCurrent(r.Name), true)
	}()
	recTmp, recDone, err := s.writeTemp(domain, dirfd, dir, fn, data, true)
	wg.Wait()
	// The spares' writes end with this function (after the renames).
	defer recDone()
	defer curDone()
	if err != nil || curErr != nil {
		if recTmp != "" {
			unix.Unlinkat(dirfd, recTmp, 0)
		}
		if curTmp != "" {
			unix.Unlinkat(dirfd, curTmp, 0)
		}
		if err == nil {
			return fmt.Errorf("store: domain %s: making snapshot %q current: %w", domain, r.Name, curErr)
		}
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, r.Name, err)
	}
	if err := renameAt(dirfd, dir, recTmp, fn); err != nil {
		unix.Unlinkat(dirfd, curTmp, 0)
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, r.Name, err)
	}
	curErr = renameAt(dirfd, dir, curTmp, currentFileName)
	if err := unix.Fsync(dirfd); err != nil {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, r.Name, &os.PathError{Op: "fsync", Path: dir, Err: err})
	}
	if curErr != nil {
		return fmt.Errorf("store: domain %s: snapshot %q stored, but not made current: %w", domain, r.Name, curErr)
	}
	return nil
}

// openDir opens the domain's directory, creating it when create is set. It
// returns -1 and no error when the directory does not exist and create is
// not set.
func (s *FileStore) openDir(domain string, create bool) (int, string, error) {
	dir := filepath.Join(s.root, domain)
	for attempt := 0; ; attempt++ {
		fd, err := open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if err == nil {
			if _, err := checkFile(fd, dir, "", true, os.Geteuid()); err != nil {
				unix.Close(fd)
				return -1, dir, err
			}
			return fd, dir, nil
		}
		if err != unix.ENOENT {
			return -1, dir, openError(dir, err)
		}
		if !create {
			return -1, dir, nil
		}
		if attempt > 0 {
			return -1, dir, openError(dir, err)
		}
		if err := unix.Mkdir(dir, 0o700); err != nil && err != unix.EEXIST {
			return -1, dir, fmt.Errorf("store: %w", &os.PathError{Op: "mkdir", Path: dir, Err: err})
		}
	}
}

func open(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func openError(path string, err error) error {
	if isSymlinkErrno(err) || err == unix.ENOTDIR {
		return fmt.Errorf("store: %s: is a symbolic link or not a directory: %w", path, ErrUnsafePermissions)
	}
	return fmt.Errorf("store: %w", &os.PathError{Op: "open", Path: path, Err: err})
}

// checkFile checks that fd is a directory (or a regular file) that group
// and others cannot write, owned by the user euid, and returns its size.
func checkFile(fd int, parent, name string, dir bool, euid int) (int64, error) {
	var st unix.Stat_t
	path := func() string {
		if name == "" {
			return parent
		}
		return parent + "/" + name
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("store: %w", &os.PathError{Op: "stat", Path: path(), Err: err})
	}
	switch kind := st.Mode & unix.S_IFMT; {
	case dir && kind != unix.S_IFDIR:
		return 0, fmt.Errorf("store: %s: not a directory: %w", path(), ErrUnsafePermissions)
	case !dir && kind != unix.S_IFREG:
		return 0, fmt.Errorf("store: %s: not a regular file: %w", path(), ErrUnsafePermissions)
	}
	if st.Mode&0o022 != 0 {
		return 0, fmt.Errorf("store: %s: mode %04o is writable by group or others (chmod go-w): %w", path(), st.Mode&0o7777, ErrUnsafePermissions)
	}
	if int64(st.Uid) != int64(euid) {
		return 0, checkOwner(path(), st.Uid)
	}
	return st.Size, nil
}

// checkOwner refuses a file or directory that the process's effective user
// does not own.
func checkOwner(what string, uid uint32) error {
	if euid := os.Geteuid(); int64(uid) != int64(euid) {
		return fmt.Errorf("store: %s: owned by uid %d, not by this process's user (uid %d): %w", what, uid, euid, ErrForeignOwner)
	}
	return nil
}

// recordError reports the record file fn of domain that cannot be read.
func recordError(domain, dir, fn string, err error) *RecordError {
	name, _ := RecordName(fn)
	return &RecordError{Domain: domain, Name: name, Path: dir + "/" + fn, Err: err}
}

// isSymlinkErrno reports whether an open with O_NOFOLLOW failed because the
// name is a symbolic link: ELOOP on Linux and macOS, EMLINK on FreeBSD.
func isSymlinkErrno(err error) bool { return err == unix.ELOOP || err == unix.EMLINK }

// readFlags opens a file to read without following a symbolic link or
// blocking on a FIFO.
const readFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK

// readAt reads the file name in dirfd into buf (reusing its capacity).
func readAt(dirfd int, dir, name string, buf []byte, euid int) ([]byte, error) {
	fd, err := openat(dirfd, name, readFlags, 0)
	return readOpened(fd, err, dir, name, buf, euid)
}

// readOpened reads the file name of dir that fd is open on (or reports
// openErr, the error of that open), checks it like readAt and closes it.
func readOpened(fd int, openErr error, dir, name string, buf []byte, euid int) ([]byte, error) {
	if openErr != nil {
		path := dir + "/" + name
		if isSymlinkErrno(openErr) {
			return buf, fmt.Errorf("store: %s: is a symbolic link: %w", path, ErrUnsafePermissions)
		}
		return buf, fmt.Errorf("store: %w", &os.PathError{Op: "open", Path: path, Err: openErr})
	}
	defer unix.Close(fd)
	size, err := checkFile(fd, dir, name, false, euid)
	if err != nil {
		return buf, err
	}
	if size > MaxRecordSize {
		return buf, &CorruptError{Path: dir + "/" + name, Err: fmt.Errorf("%d bytes, larger than %d", size, MaxRecordSize)}
	}
	if need := int(size) + 1; cap(buf) < need {
		buf = make([]byte, 0, max(need, 4096))
	}
	buf = buf[:cap(buf)]
	n := 0
	for {
		if n == len(buf) {
			if n > MaxRecordSize {
				return buf[:0], &CorruptError{Path: dir + "/" + name, Err: fmt.Errorf("larger than %d bytes", MaxRecordSize)}
			}
			buf = append(buf, 0)[:0]
			buf = buf[:cap(buf)]
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return buf[:0], fmt.Errorf("store: %w", &os.PathError{Op: "read", Path: dir + "/" + name, Err: err})
		}
		n += m
		// Record files are replaced by rename, never changed in place, so
		// the size from fstat is the whole file; stopping there saves a
		// read per file.
		if m == 0 || n >= int(size) && size > 0 {
			return buf[:n], nil
		}
	}
}

// readRecord reads and parses one record file and checks that it holds the
// snapshot its file name says, taking the record's memory from blocks
// (which may be nil). It returns buf for reuse.
func readRecord(dirfd int, dir, name string, buf []byte, euid int, blocks *recordBlocks) (*Record, []byte, error) {
	data, err := readAt(dirfd, dir, name, buf, euid)
	if err != nil {
		return nil, data, err
	}
	r, err := parseRecordFile(data, dir, name, blocks)
	return r, data, err
}

// parseRecordFile parses data, read from the record file name of dir, and
// checks that it holds the snapshot its file name says.
func parseRecordFile(data []byte, dir, name string, blocks *recordBlocks) (*Record, error) {
	r, err := unmarshal(data, blocks)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.Path = dir + "/" + name
		}
		return nil, err
	}
	if !fileNameMatches(r.Name, name) {
		return nil, &CorruptError{Path: dir + "/" + name, Err: fmt.Errorf("holds snapshot %q, whose file would be %s", r.Name, RecordFileName(r.Name))}
	}
	return r, nil
}

func readCurrent(dirfd int, dir string, euid int) (string, error) {
	data, err := readAt(dirfd, dir, currentFileName, nil, euid)
	if err != nil {
		return "", err
	}
	name, err := parseCurrent(data)
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.Path = dir + "/" + currentFileName
			return "", err
		}
		return "", &CorruptError{Path: dir + "/" + currentFileName, Err: err}
	}
	return name, nil
}

// writeTemp writes data to a new temporary file for name in dirfd, fsyncs
// it unless sync is false, closes it and returns its name. On error
// nothing is left behind.
func writeTemp(dirfd int, dir, name string, data []byte, sync bool) (string, error) {
	var (
		tmp string
		fd  int
		err error
	)
	for {
		tmp = tempPrefix + name + "-" + strconv.FormatUint(rand.Uint64(), 36)
		fd, err = openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != unix.EEXIST {
			break
		}
	}
	if err != nil {
		return "", &os.PathError{Op: "create", Path: dir + "/" + tmp, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir+"/"+tmp)
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return "", err
	}
	return tmp, nil
}

// renameAt renames the temporary file tmp over name, removing tmp if that
// fails.
func renameAt(dirfd int, dir, tmp, name string) error {
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return &os.PathError{Op: "rename", Path: dir + "/" + name, Err: err}
	}
	return nil
}

func removeAt(dirfd int, dir, name string) error {
	if err := unix.Unlinkat(dirfd, name, 0); err != nil {
		return &os.PathError{Op: "remove", Path: dir + "/" + name, Err: err}
	}
	return nil
}

// readDirNames lists a directory through a fresh open file description.
func readDirNames(dirfd int, dir string) ([]string, error) {
	fd, err := openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir)
	defer f.Close()
	return f.Readdirnames(-1)
}

// existsAt reports whether a directory entry called name exists (without
// following a symbolic link or blocking on a FIFO).
func existsAt(dirfd int, dir, name string) (bool, error) {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch err {
	case nil:
		unix.Close(fd)
		return true, nil
	case unix.ENOENT:
		return false, nil
	case unix.ELOOP, unix.EMLINK, unix.EACCES, unix.ENXIO:
		return true, nil
	}
	return false, &os.PathError{Op: "open", Path: dir + "/" + name, Err: err}
}
