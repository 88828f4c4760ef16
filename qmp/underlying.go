package qmp

import goqemuqmp "github.com/digitalocean/go-qemu/qmp"

// GoQEMUMonitor returns the go-qemu monitor that m, a Monitor made by
// FromGoQEMU, wraps; ok is false for any other Monitor. The engine uses it
// to recognise a domain a manager runs (go-qemu's LibvirtRPCMonitor: the
// QMP goes through libvirt, which restarts the domain from its own
// configuration).
func GoQEMUMonitor(m Monitor) (gm goqemuqmp.Monitor, ok bool) {
	switch w := m.(type) {
	case *goQEMUMonitor:
		return w.m, true
	case *goQEMUFileMonitor:
		return w.m, true
	}
	return nil, false
}

// ManagedByLibvirt reports whether m reaches QEMU through libvirt (go-qemu's
// LibvirtRPCMonitor wrapped by FromGoQEMU).
func ManagedByLibvirt(m Monitor) bool {
	gm, ok := GoQEMUMonitor(m)
	if !ok {
		return false
	}
	_, libvirt := gm.(*goqemuqmp.LibvirtRPCMonitor)
	return libvirt
}
