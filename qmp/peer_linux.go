package qmp

import "golang.org/x/sys/unix"

// peerPID reads the pid of the process that made the socket's other end
// (SO_PEERCRED).
func (c *Client) peerPID() (int, bool) {
	if c.unix == nil {
		return 0, false
	}
	raw, err := c.unix.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil || cred.Pid <= 0 {
		return 0, false
	}
	return int(cred.Pid), true
}
