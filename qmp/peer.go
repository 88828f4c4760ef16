package qmp

// PeerPID returns the process id of the QEMU at the other end of m: a
// Client on a unix socket, a Shared view of one, or a Monitor that wraps
// one and says so with an UnwrapMonitor method. ok is false for any other
// Monitor (a TCP connection, a go-qemu monitor, libvirt) and where the
// platform cannot tell a unix socket's peer.
func PeerPID(m Monitor) (pid int, ok bool) {
	for i := 0; i < 8 && m != nil; i++ {
		switch c := m.(type) {
		case *Client:
			return c.peerPID()
		case *Shared:
			return c.c.peerPID()
		case interface{ UnwrapMonitor() Monitor }:
			m = c.UnwrapMonitor()
		default:
			return 0, false
		}
	}
	return 0, false
}
