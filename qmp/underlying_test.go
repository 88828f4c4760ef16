package qmp

import (
	"testing"

	goqemuqmp "github.com/digitalocean/go-qemu/qmp"
)

func TestManagedByLibvirt(t *testing.T) {
	rpc := goqemuqmp.NewLibvirtRPCMonitor("dom", nil)
	if !ManagedByLibvirt(FromGoQEMU(rpc)) {
		t.Error("a libvirt RPC monitor is not recognised")
	}
	if gm, ok := GoQEMUMonitor(FromGoQEMU(rpc)); !ok || gm != goqemuqmp.Monitor(rpc) {
		t.Error("GoQEMUMonitor does not return the wrapped monitor")
	}
	if ManagedByLibvirt(&Client{}) {
		t.Error("our own client is taken for libvirt's")
	}
	sock, err := goqemuqmp.NewSocketMonitor("unix", "/nonexistent", 0)
	if err == nil && ManagedByLibvirt(FromGoQEMU(sock)) {
		t.Error("a socket monitor is taken for libvirt's")
	}
}
