package store

import (
	"bytes"
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// openTerminated opens the file name in dirfd to read it, like readAt
// does. The byte after name in memory must be a NUL (readRecordNames lays
// its names out so): the kernel is given name's own bytes, which saves
// copying each name of a listing into a new C string.
func openTerminated(dirfd int, name string) (int, error) {
	p := unsafe.Pointer(unsafe.StringData(name))
	for {
		fd, _, e := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(p), readFlags, 0, 0, 0)
		if e == 0 {
			return int(fd), nil
		}
		if e != unix.EINTR {
			return -1, e
		}
	}
}

// direntNames calls each with the name of every entry of buf, which holds
// linux_dirent64 records as getdents64 returns them (ReadDirent reads
// those on Linux), in order, skipping the deleted entries (inode 0) and
// "." and "..". The name is only valid during the call.
func direntNames(buf []byte, each func(name []byte)) {
	// struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16,
	// d_type u8, then the name and a NUL, padded.
	const nameOff = 19
	for len(buf) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
		if reclen < nameOff || reclen > len(buf) {
			return
		}
		rec := buf[:reclen]
		buf = buf[reclen:]
		if binary.NativeEndian.Uint64(rec[0:8]) == 0 {
			continue
		}
		name := rec[nameOff:]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if string(name) == "." || string(name) == ".." {
			continue
		}
		each(name)
	}
}
