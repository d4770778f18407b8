//go:build tools

// Package toolchain pins the control-plane components the lab builds from
// source: kube-apiserver and kube-controller-manager from k8s.io/kubernetes,
// pilot-discovery (istiod), pilot-agent and istioctl from istio.io/istio. It is
// its own module so the product's go.mod never carries them; hostctl's lab
// provider runs `go build` in this directory (see lab/build).
//
// Istio's commands are pinned by the tool directives in go.mod (their main
// packages import more than their app packages do). Kubernetes' are pinned
// here: `go get -tool` walks k8s.io/kubernetes packages that need its
// unpublished staging tree.
package toolchain

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
