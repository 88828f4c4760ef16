//go:build linux || darwin || freebsd

package store

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Spare files take the creation of a file off a write's path. Creating a
// file costs about as much as flushing one on a journaling filesystem
// (half a millisecond here, of the one and a half a record's durable
// write takes), so a FileStore keeps up to maxSpares empty files in a
// domain's directory, and a write made while it holds the domain's lock
// fills one, fsyncs it and renames it over the record instead of creating
// a temporary file. The first write of a hold of the lock starts a
// goroutine that makes up the missing spares, for the hold's next writes
// and the next holder's, while the holder goes on (an engine waits for
// QEMU then). When the lock is released their descriptors are closed and
// the files stay; the next holder, in this process or another, adopts
// them when it takes the lock: an empty regular file of this user, mode
// 0600 or less, with no other link. Anything else under the spare prefix
// is removed, like the temporary files of an interrupted write.

const (
	sparePrefix = ".spare-"
	maxSpares   = 3
)

// startSpares is called by Lock once the domain's lock is held: it
// removes the temporary files an interrupted write left, and adopts the
// spares an earlier holder left (removing the ones that are not exactly
// what this store creates). It creates none: creating them now would
// compete with the holder's first steps.
func (s *FileStore) startSpares(domain string, dirfd int, dir string) {
	names, err := readDirNames(dirfd, dir)
	if err != nil {
		return
	}
	euid := os.Geteuid()
	var adopted []spare
	for _, n := range names {
		switch {
		case strings.HasPrefix(n, tempPrefix):
			unix.Unlinkat(dirfd, n, 0)
		case strings.HasPrefix(n, sparePrefix):
			if len(adopted) < maxSpares {
				if fd, ok := adoptSpare(dirfd, n, euid); ok {
					adopted = append(adopted, spare{n, fd})
					continue
				}
			}
			unix.Unlinkat(dirfd, n, 0)
		}
	}
	s.mu.Lock()
	if s.spares == nil {
		s.spares = map[string]*sparePool{}
	}
	s.spares[domain] = &sparePool{files: adopted}
	s.mu.Unlock()
}

// adoptSpare opens the spare file name for writing if it is one this
// store would have created: a regular file of euid, mode 0600 or less
// (no execute, set-id or sticky bit, nothing for group or others), empty,
// with one link. It looks before it opens, so that nothing but a regular
// file is ever opened (a device's open can have effects), and checks the
// opened file again.
func adoptSpare(dirfd int, name string, euid int) (int, bool) {
	ok := func(st *unix.Stat_t) bool {
		return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o7177 == 0 &&
			int64(st.Uid) == int64(euid) && st.Size == 0 && st.Nlink == 1
	}
	var before unix.Stat_t
	if unix.Fstatat(dirfd, name, &before, unix.AT_SYMLINK_NOFOLLOW) != nil || !ok(&before) {
		return -1, false
	}
	fd, err := openat(dirfd, name, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, false
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || !ok(&st) || st.Ino != before.Ino || st.Dev != before.Dev {
		unix.Close(fd)
		return -1, false
	}
	return fd, true
}

// stopSpares ends the hold of the domain's lock: it waits for the writes
// that took a spare to rename it (a write racing the unlock), and for the
// goroutine creating spares, if one runs (it stops after the file it is
// creating), closes the spares' descriptors and leaves the files for the
// next holder. Once it returns, nothing of the hold creates, fills or
// renames a spare.
func (s *FileStore) stopSpares(domain string) {
	s.mu.Lock()
	p := s.spares[domain]
	delete(s.spares, domain)
	s.mu.Unlock()
	if p == nil {
		return
	}
	p.writers.Wait()
	if p.filled != nil {
		<-p.filled
	}
	for _, sp := range p.files {
		unix.Close(sp.fd)
	}
	p.files = nil
}

// fillSpares creates, in a goroutine, the spares p lacks, until p holds
// maxSpares or its hold ends; p.filled is closed when it returns. It is
// called with s.mu held. Creation errors (a full disk) end it quietly:
// writes then create their own temporary files, and report the error if
// that fails too.
func (s *FileStore) fillSpares(domain string, p *sparePool) {
	p.filled = make(chan struct{})
	go func() {
		defer close(p.filled)
		dirfd, _, err := s.openDir(domain, false)
		if err != nil || dirfd < 0 {
			return
		}
		defer unix.Close(dirfd)
		for {
			s.mu.Lock()
			done := len(p.files) >= maxSpares || s.spares[domain] != p
			s.mu.Unlock()
			if done {
				return
			}
			sp, err := createSpare(dirfd)
			if err != nil {
				return
			}
			s.mu.Lock()
			p.files = append(p.files, sp)
			s.mu.Unlock()
		}
	}()
}

// createSpare creates a new empty spare file in dirfd.
func createSpare(dirfd int) (spare, error) {
	for {
		name := sparePrefix + strconv.FormatUint(rand.Uint64(), 36)
		fd, err := openat(dirfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return spare{}, err
		}
		return spare{name, fd}, nil
	}
}

// takeSpare removes a spare from the domain's pool, if the store holds
// the domain's lock and has one, and counts its writer in the pool (see
// writeTemp). The first call of a hold starts making up the missing
// spares.
func (s *FileStore) takeSpare(domain string) (spare, *sparePool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.spares[domain]
	if p == nil {
		return spare{}, nil, false
	}
	if p.filled == nil {
		defer s.fillSpares(domain, p)
	}
	if len(p.files) == 0 {
		return spare{}, nil, false
	}
	// The oldest first: adopted spares before the ones made since.
	sp := p.files[0]
	p.files = p.files[1:]
	p.writers.Add(1)
	return sp, p, true
}

// writeTemp is the package's writeTemp with a spare when the domain has
// one: data is written to the spare, which is fsynced (unless sync is
// false) and closed, and its name returned for the rename. done must be called once the caller has
// renamed it (or given up): until then the hold of the lock does not end,
// so that no other holder adopts the spare while it is being filled and
// renamed. On error nothing is left behind (done must still be called).
func (s *FileStore) writeTemp(domain string, dirfd int, dir, name string, data []byte, sync bool) (tmp string, done func(), err error) {
	sp, p, ok := s.takeSpare(domain)
	if !ok {
		tmp, err := writeTemp(dirfd, dir, name, data, sync)
		return tmp, func() {}, err
	}
	done = p.writers.Done
	err = writeFull(sp.fd, data)
	op := "write"
	if err == nil && sync {
		op, err = "fsync", unix.Fsync(sp.fd)
	}
	if cerr := unix.Close(sp.fd); err == nil {
		op, err = "close", cerr
	}
	if err != nil {
		unix.Unlinkat(dirfd, sp.name, 0)
		return "", done, &os.PathError{Op: op, Path: dir + "/" + sp.name, Err: err}
	}
	return sp.name, done, nil
}

// writeAtomic replaces name in dirfd with data: a temporary or spare file
// (s.writeTemp), fsynced, renamed over name, and an fsync of the
// directory; without durable, the same with neither fsync.
func (s *FileStore) writeAtomic(domain string, dirfd int, dir, name string, data []byte, durable bool) error {
	tmp, done, err := s.writeTemp(domain, dirfd, dir, name, data, durable)
	defer done()
	if err != nil {
		return err
	}
	if err := renameAt(dirfd, dir, tmp, name); err != nil {
		return err
	}
	if !durable {
		return nil
	}
	if err := unix.Fsync(dirfd); err != nil {
		return &os.PathError{Op: "fsync", Path: dir, Err: err}
	}
	return nil
}

// writeFull writes all of data to fd.
func writeFull(fd int, data []byte) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("write returned 0: %w", unix.EIO)
		}
		data = data[n:]
	}
	return nil
}
