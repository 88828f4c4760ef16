//go:build unix

package vmsnap

import (
	"fmt"
	"os"
	"syscall"
)

// fileID returns the device and inode of the regular file at path (not
// following a symbolic link), refusing one of another user.
func fileID(path string) (dev, ino uint64, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("%w: %s is not a regular file", ErrInconsistent, path)
	}
	if int(st.Uid) != os.Geteuid() {
		return 0, 0, fmt.Errorf("%w: %s is owned by uid %d, not this process's user", ErrInconsistent, path, st.Uid)
	}
	return uint64(st.Dev), uint64(st.Ino), nil
}

// checkOwnFile refuses path unless it is a regular file (not a symbolic
// link) of this process's user; with private, also unless no one else may
// read or write it.
func checkOwnFile(path string, private bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok || !fi.Mode().IsRegular():
		return fmt.Errorf("%w: %s is not a regular file", ErrInconsistent, path)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%w: %s is owned by uid %d, not this process's user", ErrInconsistent, path, st.Uid)
	case private && fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%w: %s is readable or writable by others (%v)", ErrInconsistent, path, fi.Mode().Perm())
	}
	return nil
}
