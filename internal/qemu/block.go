package qemu

import (
	"context"
	"strings"

	"github.com/vmsnap/vmsnap/internal/qemuimg"
	"github.com/vmsnap/vmsnap/qmp"
)

// BlockDevice is one guest block device as query-block reports it (QAPI
// BlockInfo), with or without a medium.
type BlockDevice struct {
	// Device is the block backend's name: the id of a -drive, "pflash0"
	// for firmware flash; empty for a disk attached with -blockdev and
	// -device.
	Device string `json:"device"`
	// QDev is the guest device's qdev id ("dev1") or QOM path
	// ("/machine/peripheral/dev0/virtio-backend",
	// "/machine/system.flash0"); empty when no device uses the backend.
	QDev string `json:"qdev,omitempty"`
	// Type is QEMU's device type, "unknown" for every device in QEMU 7.2.
	Type string `json:"type"`
	// Removable is true for removable media (CD-ROM, floppy).
	Removable bool `json:"removable"`
	// Locked is true when the guest locked the medium in.
	Locked bool `json:"locked"`
	// TrayOpen is set for removable media: whether the tray is open.
	TrayOpen *bool `json:"tray_open,omitempty"`
	// IOStatus is "ok", "failed" or "nospace" for devices that report
	// I/O errors ("" otherwise).
	IOStatus string `json:"io-status,omitempty"`
	// Inserted is the medium; nil for an empty removable device.
	Inserted *Inserted `json:"inserted,omitempty"`
}

// Name is how the guest device is known: Device, else the device's qdev
// id taken from QDev (see QDevName).
func (b BlockDevice) Name() string {
	if b.Device != "" {
		return b.Device
	}
	return QDevName(b.QDev)
}

// Inserted is a block device's medium (QAPI BlockDeviceInfo), which is
// also what query-named-block-nodes reports for each node.
type Inserted struct {
	// Node is the top node's name; QMP commands address the disk by it.
	// QEMU names nodes it made itself "#blockNNN", which change when QEMU
	// restarts.
	Node string `json:"node-name"`
	// Driver is the top node's driver: the format ("qcow2", "raw"), a
	// protocol ("file", "host_device") for protocol nodes, or a filter
	// ("throttle", "copy-on-read") when one sits on top.
	Driver string `json:"drv"`
	// File is the top image's file name; a -snapshot disk's is a
	// "json:{...}" pseudo-filename naming a temporary overlay
	// /var/tmp/vl.XXXXXX (see Temporary).
	File string `json:"file"`
	// ReadOnly is true for a read-only medium (readonly=on, a CD-ROM,
	// the firmware code flash).
	ReadOnly bool `json:"ro"`
	// Encrypted is true for an encrypted image.
	Encrypted bool `json:"encrypted"`
	// BackingFile is the top image's backing file as QEMU opened it.
	BackingFile string `json:"backing_file,omitempty"`
	// BackingFileDepth is the number of images below the top one.
	BackingFileDepth int `json:"backing_file_depth"`
	// DetectZeroes is the detect-zeroes setting ("off", "on", "unmap").
	DetectZeroes string `json:"detect_zeroes,omitempty"`
	// Cache is the cache mode.
	Cache *Cache `json:"cache,omitempty"`
	// WriteThreshold is the write threshold in bytes, 0 when unset.
	WriteThreshold uint64 `json:"write_threshold,omitempty"`
	// Image is the top image with its backing chain nested in
	// Image.BackingImage (query-block always nests it;
	// query-named-block-nodes with flat does not).
	Image qemuimg.Info `json:"image"`
}

// Cache is a node's cache mode (QAPI BlockdevCacheInfo).
type Cache struct {
	Writeback bool `json:"writeback"`
	Direct    bool `json:"direct"`
	NoFlush   bool `json:"no-flush"`
}

// Temporary reports whether the medium is the temporary overlay that
// QEMU's -snapshot (or a drive's snapshot=on) put on the image: its file
// is a "json:{...}" name whose file is in /var/tmp/vl.*, writes go there
// and are lost when QEMU exits.
func (in *Inserted) Temporary() bool {
	f := in.File
	if in.Image.Pseudo != "" {
		f = in.Image.Pseudo
	}
	return strings.HasPrefix(f, "json:") && strings.Contains(f, "/vl.")
}

// QDevName turns a qdev QOM path into the device's id:
// "/machine/peripheral/dev0/virtio-backend" gives "dev0", and an id
// ("dev1") stays as it is. A path outside /machine/peripheral (such as
// "/machine/system.flash0") gives its last element.
func QDevName(qdev string) string {
	if !strings.HasPrefix(qdev, "/") {
		return qdev
	}
	parts := strings.Split(strings.Trim(qdev, "/"), "/")
	for i, p := range parts {
		if (p == "peripheral" || p == "peripheral-anon") && i+1 < len(parts) {
			return parts[i+1]
		}
	}
	return parts[len(parts)-1]
}

// BlockDevices runs query-block: every block device, those without a
// medium too (Inserted nil).
func BlockDevices(ctx context.Context, mon qmp.Monitor) ([]BlockDevice, error) {
	var blocks []BlockDevice
	if err := mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	return blocks, nil
}

// Node is one block node (query-named-block-nodes, QAPI BlockDeviceInfo):
// format nodes, protocol nodes under them, filters and overlays alike.
type Node = Inserted

// NamedNodes runs query-named-block-nodes with flat: every node once, its
// Image without the nested backing chain.
func NamedNodes(ctx context.Context, mon qmp.Monitor) ([]Node, error) {
	var nodes []Node
	if err := mon.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

// FormatNodesByFile maps each image file of nodes to the name of the
// first node that opens it through a format driver, skipping the protocol
// nodes ("file", "host_device") that only hold the file open. That is the
// node to give block-commit as base or top.
func FormatNodesByFile(nodes []Node) map[string]string {
	out := map[string]string{}
	for _, n := range nodes {
		if n.Driver == "file" || n.Driver == "host_device" || n.Node == "" {
			continue
		}
		// A json: pseudo-filename (QEMU 5.2, paths with commas) is keyed
		// by the file it names, as Image.Filename is.
		f := qemuimg.PlainFilename(n.File)
		if _, seen := out[f]; !seen {
			out[f] = n.Node
		}
	}
	return out
}

// action is one action of a QMP transaction.
type action struct {
	Type string         `json:"type"`
	Data map[string]any `json:"data"`
}

// transaction runs actions in one QMP transaction: all or none.
func transaction(ctx context.Context, mon qmp.Monitor, actions []action) error {
	return mon.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
}
