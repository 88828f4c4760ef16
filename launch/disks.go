package launch

import (
	"context"
	"fmt"
	"strings"

	"github.com/vmsnap/vmsnap/qmp"
)

// DiskFiles asks the running QEMU behind mon for its disks (query-block)
// and returns, for each disk that argv declares, the device name vmsnap
// uses for it (the block backend name, or the qdev id for -blockdev disks)
// mapped to the image path argv opens for it. A disk is found in argv by
// its names first (the -drive's backend name, the -device id, the
// -blockdev node names), then by its images: the top image, then its
// backing files nearest first, so a command line that names the base
// image still matches after an external snapshot put an overlay on top.
// Disks argv does not declare (a hotplugged disk) and empty drives are
// left out.
func DiskFiles(ctx context.Context, mon qmp.Monitor, argv []string) (map[string]string, error) {
	type imageInfo struct {
		Filename string     `json:"filename"`
		Backing  *imageInfo `json:"backing-image"`
	}
	var blocks []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			File     string    `json:"file"`
			NodeName string    `json:"node-name"`
			Image    imageInfo `json:"image"`
		} `json:"inserted"`
	}
	if err := mon.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, fmt.Errorf("launch: list disks: %w", err)
	}
	g, err := parseBlockGraph(argv)
	if err != nil {
		return nil, fmt.Errorf("launch: %w", err)
	}
	files := map[string]string{}
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		dev := b.Device
		if dev == "" {
			dev = qdevName(b.QDev)
		}
		if d, err := g.find([]string{b.Device, qdevName(b.QDev), b.QDev, b.Inserted.NodeName}, ""); err == nil && d != nil {
			if f := g.file(d); f != "" {
				files[dev] = f
				continue
			}
		}
		cands := []string{b.Inserted.Image.Filename, b.Inserted.File}
		for bi := b.Inserted.Image.Backing; bi != nil; bi = bi.Backing {
			cands = append(cands, bi.Filename)
		}
		for _, c := range cands {
			if c == "" {
				continue
			}
			if _, n := replacePath(argv, map[string]string{c: c}); n[c] > 0 {
				files[dev] = c
				break
			}
		}
	}
	return files, nil
}

// qdevName turns "/machine/peripheral/dev0/virtio-backend" into "dev0",
// as vmsnap names -blockdev disks.
func qdevName(qdev string) string {
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
