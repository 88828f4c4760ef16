//go:build !linux

package qmp

// peerPID cannot tell a unix socket's peer on this platform.
func (c *Client) peerPID() (int, bool) { return 0, false }
