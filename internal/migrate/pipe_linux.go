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
