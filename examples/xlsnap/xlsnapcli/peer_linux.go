package xlsnapcli

import (
	"net"
	"syscall"
	"time"

	"github.com/vmsnap/vmsnap/qmp"
)

// peerPid returns the pid of the process serving the unix socket at path
// (SO_PEERCRED carries the listener's credentials), 0 when unknown. The
// probe connection waits in QEMU's backlog while mon holds the monitor and
// is closed at once.
func peerPid(_ qmp.Monitor, path string) int {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}
