//go:build darwin || freebsd

package store

import "golang.org/x/sys/unix"

// openTerminated opens the file name in dirfd to read it, like readAt
// does (the NUL that readRecordNames puts after name is not needed here).
func openTerminated(dirfd int, name string) (int, error) {
	return openat(dirfd, name, readFlags, 0)
}

// direntNames calls each with the name of every entry of buf, which holds
// directory entries as ReadDirent returns them, in order, skipping "."
// and "..".
func direntNames(buf []byte, each func(name []byte)) {
	_, _, names := unix.ParseDirent(buf, -1, nil)
	for _, n := range names {
		each([]byte(n))
	}
}

// openWaiting is openTerminated: there are no rings to wait for.
func openWaiting(dirfd int, name string) (int, error) { return openTerminated(dirfd, name) }

// ringBatch exists on Linux only.
type ringBatch struct{}

// readRing reports false: io_uring is Linux's.
func (lr *listReader) readRing([]string) bool { return false }
