//go:build !linux

package migrate

import "os"

// setPipeSize does nothing where the pipe capacity cannot be set.
func setPipeSize(*os.File, int) {}

// preadOnce reads into buf at off (direct reads, its only use, are
// Linux-only).
func preadOnce(f *os.File, buf []byte, off int64) (int, error) { return f.ReadAt(buf, off) }
