package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/vmsnap/vmsnap/qmp"
)

// SnapInternal takes internal snapshot tag of every node in one
// transaction of blockdev-snapshot-internal-sync: all or none. The guest
// keeps running; the snapshots hold no VM state (disk-only).
func SnapInternal(ctx context.Context, mon qmp.Monitor, nodes []string, tag string) error {
	actions := make([]action, len(nodes))
	for i, n := range nodes {
		actions[i] = action{Type: "blockdev-snapshot-internal-sync", Data: map[string]any{"device": n, "name": tag}}
	}
	return transaction(ctx, mon, actions)
}

// DeleteInternal removes internal snapshot tag from node's top image
// (blockdev-snapshot-delete-internal-sync). QEMU cannot do this in a
// transaction: callers deleting from several disks call it per disk.
// When the image does not hold the snapshot the error satisfies
// IsSnapshotMissing.
func DeleteInternal(ctx context.Context, mon qmp.Monitor, node, tag string) error {
	return mon.Execute(ctx, "blockdev-snapshot-delete-internal-sync", map[string]any{"device": node, "name": tag}, nil)
}

// IsSnapshotMissing reports whether err is QEMU saying the snapshot is not
// on the disk, so deleting it is already done. QEMU 7.2 says "Snapshot
// with id 'null' and name 'x' does not exist on device 'disk0'"; older
// versions and other paths say "... not found".
func IsSnapshotMissing(err error) bool {
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		return false
	}
	d := strings.ToLower(qe.Desc)
	return strings.Contains(d, "snapshot") && (strings.Contains(d, "not found") || strings.Contains(d, "does not exist"))
}

// Overlay is one disk of an external snapshot: Node (the disk's current
// top node) gets Overlay, a qcow2 file that exists already and is backed
// by the node's image, as its new top node NewNode.
type Overlay struct {
	// Node is the disk's top node.
	Node string
	// File is the prepared overlay's path.
	File string
	// NewNode is the node name the overlay gets; SnapExternal fills in
	// NewNodeName() when it is empty.
	NewNode string
}

// SnapExternal puts each prepared overlay on top of its disk in one
// transaction of blockdev-snapshot-sync (mode existing, format qcow2):
// all or none. The old top image becomes read-only and holds the disk as
// it was; the guest writes to the overlay from then on. It returns the
// new top nodes' names, in the order of overlays.
func SnapExternal(ctx context.Context, mon qmp.Monitor, overlays []Overlay) ([]string, error) {
	actions := make([]action, len(overlays))
	nodes := make([]string, len(overlays))
	for i, o := range overlays {
		nodes[i] = o.NewNode
		if nodes[i] == "" {
			nodes[i] = NewNodeName()
		}
		actions[i] = action{Type: "blockdev-snapshot-sync", Data: map[string]any{
			"node-name":          o.Node,
			"snapshot-file":      o.File,
			"snapshot-node-name": nodes[i],
			"format":             "qcow2",
			"mode":               "existing",
		}}
	}
	if err := transaction(ctx, mon, actions); err != nil {
		return nil, err
	}
	return nodes, nil
}

// NewNodeName makes a block node name QEMU accepts (a letter, then at most
// 30 of [A-Za-z0-9_-]) that no other node has: "vmsnap-" and 16 random
// hex digits.
func NewNodeName() string {
	var b [8]byte
	rand.Read(b[:]) // never returns an error (it crashes the program instead)
	return "vmsnap-" + hex.EncodeToString(b[:])
}

// BlockCommit merges layers of device's chain into the node base and
// waits for the job to end (see RunJob). With top empty it is an active
// commit of everything above base: QEMU keeps the guest writing through
// it, reports "ready", and BlockCommit completes it with job-complete;
// base is then the disk's top node. With top, an intermediate node, only
// top and the layers between it and base are merged and QEMU points top's
// overlay at base. ctx's end does not abandon the job (see RunJob).
func BlockCommit(ctx context.Context, mon qmp.Monitor, device, top, base string) error {
	args := map[string]any{"device": device, "base-node": base, "auto-dismiss": false}
	if top != "" {
		args["top-node"] = top
	}
	return RunJob(ctx, mon, Job{ID: NewJobID("commit"), Command: "block-commit", Args: args, CompleteWhenReady: top == ""})
}

// BlockdevDel removes node, a node added with blockdev-add that nothing
// uses any more (blockdev-del).
func BlockdevDel(ctx context.Context, mon qmp.Monitor, node string) error {
	return mon.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
}
