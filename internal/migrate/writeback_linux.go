package migrate

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing f's dirty pages to disk
// now (sync_file_range SYNC_FILE_RANGE_WRITE, which does not wait for
// completion). Called while QEMU writes the memory file, it overlaps the
// disk writes with the migration, so the fsync at the end has little left
// to do. Errors are ignored: the fsync reports what matters.
func startWriteback(f *os.File) {
	_ = unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
