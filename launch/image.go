package launch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// inspectImage asks qemu-img (bin) for file's format and backing file,
// and checks that its whole backing chain opens.
func inspectImage(ctx context.Context, bin, file string) (image, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return image{}, err
	}
	if bin == "" {
		bin = "qemu-img"
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "info", "-U", "--backing-chain", "--output=json", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return image{}, fmt.Errorf("%s info %s: %w: %s", bin, file, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var chain []struct {
		Format        string `json:"format"`
		FullBacking   string `json:"full-backing-filename"`
		Backing       string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
		VirtualSize   int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &chain); err != nil || len(chain) == 0 {
		return image{}, fmt.Errorf("%s info %s: unexpected output: %v", bin, file, err)
	}
	top := chain[0]
	img := image{File: file, Format: top.Format, BackingFormat: top.BackingFormat, Device: fi.Mode()&os.ModeDevice != 0}
	img.Backing = backingOf(file, top.FullBacking, top.Backing)
	// The images below, each named by its overlay's header; qemu-img
	// lists one entry per image it opened, so the last one has no backing.
	prev := img.Backing
	for _, e := range chain[1:] {
		if prev == "" {
			break
		}
		img.Below = append(img.Below, prev)
		prev = backingOf(prev, e.FullBacking, e.Backing)
	}
	return img, nil
}

// backingOf is the absolute path of the backing file an overlay's header
// names: qemu-img's full-backing-filename, else backing-filename taken
// relative to the overlay.
func backingOf(overlay, full, backing string) string {
	if full != "" {
		return filepath.Clean(full)
	}
	return absPath(overlay, backing)
}
