package migrate

import (
	"os"

	"golang.org/x/sys/unix"
)

// setPipeSize asks for a pipe capacity of n bytes on p, so QEMU reads
// more of the stream per wake-up. Refusals (a per-user pipe limit) keep
// the default capacity.
func setPipeSize(p *os.File, n int) {
	rc, err := p.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, n)
	})
}

// preadOnce reads into buf at off with one pread(2), as an O_DIRECT read
// must be made: os.File.ReadAt would go on after a short read from an
// offset, and into memory, that O_DIRECT refuses.
func preadOnce(f *os.File, buf []byte, off int64) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Pread(int(fd), buf, off)
			if rerr != unix.EINTR {
				return true
			}
		}
	}); err != nil {
		return 0, err
	}
	if n < 0 {
		n = 0
	}
	return n, rerr
}
