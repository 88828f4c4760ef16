package fakeqemu

import "fmt"

// DiskSnapshots returns the internal snapshots of the image whose format
// or protocol node is node, oldest first.
func (s *Server) DiskSnapshots(node string) ([]Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img, err := s.image(node)
	if err != nil {
		return nil, err
	}
	out := []Snapshot{}
	for _, sn := range img.snaps {
		out = append(out, sn.Snapshot)
	}
	return out, nil
}

// AddDiskSnapshot adds a disk-only internal snapshot to the image of
// node, as `qemu-img snapshot -c name` on the image would.
func (s *Server) AddDiskSnapshot(node, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	img, err := s.image(node)
	if err != nil {
		return err
	}
	if _, sn := img.findSnap("", name); sn != nil {
		return fmt.Errorf("fakeqemu: node %s: snapshot %q already exists", node, name)
	}
	sn := img.addSnap(name, 0, 0, 0)
	sn.hasICount = true
	return nil
}

// WriteDisk simulates a guest write: the active image of the disk that
// node belongs to now holds pattern.
func (s *Server) WriteDisk(node string, pattern byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _, _ := s.blk.find(node)
	if d == nil {
		return fmt.Errorf("fakeqemu: no block node %q", node)
	}
	d.active().content = pattern
	return nil
}

// DiskContent returns what the image of node holds. After an external
// snapshot the original node keeps the content it had when the overlay
// was created, while the overlay node follows guest writes.
func (s *Server) DiskContent(node string) (byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img, err := s.image(node)
	if err != nil {
		return 0, err
	}
	return img.content, nil
}

// Chain returns the image files of the disk node belongs to, from the
// active image down to the base, as after blockdev-snapshot-sync.
func (s *Server) Chain(node string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _, _ := s.blk.find(node)
	if d == nil {
		return nil, fmt.Errorf("fakeqemu: no block node %q", node)
	}
	var out []string
	for _, img := range d.chain {
		out = append(out, img.file)
	}
	return out, nil
}

// ActiveNode returns the format node name of the active image of the disk
// node belongs to.
func (s *Server) ActiveNode(node string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, _, _ := s.blk.find(node)
	if d == nil {
		return "", fmt.Errorf("fakeqemu: no block node %q", node)
	}
	return d.active().node, nil
}

func (s *Server) image(node string) (*image, error) {
	d, i, _ := s.blk.find(node)
	if d == nil {
		return nil, fmt.Errorf("fakeqemu: no block node %q", node)
	}
	return d.chain[i], nil
}
