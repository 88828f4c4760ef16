//go:build !linux

package xlsnapcli

import "github.com/vmsnap/vmsnap/qmp"

// peerPid returns 0: only Linux tells a socket's peer pid here.
func peerPid(_ qmp.Monitor, _ string) int { return 0 }
