#!/bin/bash
for seed in 1 2; do
  /tmp/fcos_pilot.sh focal $seed & /tmp/fcos_pilot.sh rambo $seed & wait
done
