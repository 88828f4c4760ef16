package launch

import (
	"context"
	"fmt"

	"github.com/vmsnap/vmsnap/internal/qemu"
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
	blocks, err := qemu.BlockDevices(ctx, mon)
	if err != nil {
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
		dev := b.Name()
		if d, err := g.find([]string{b.Device, qemu.QDevName(b.QDev), b.QDev, b.Inserted.Node}, ""); err == nil && d != nil {
			if f := g.file(d); f != "" {
				files[dev] = f
				continue
			}
		}
		cands := append([]string{b.Inserted.Image.Filename, b.Inserted.File}, b.Inserted.Image.BackingFiles()...)
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
