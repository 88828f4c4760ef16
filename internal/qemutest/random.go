package qemutest

import (
	"crypto/rand"
	"io"
	"os"
	"testing"
)

// WriteRandom writes size bytes of incompressible data to path (guest RAM
// for a Loader, a memory file to compare with dd) and flushes them to
// disk, so that their writeback does not land in the middle of what the
// caller measures (on ext4 an fsync of a small file can wait for another
// file's data).
func WriteRandom(tb testing.TB, path string, size int64) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	_, err = io.CopyN(f, rand.Reader, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
}
