"""What the tests share, by concern; none of it ships in the wheel.

`gateway`: the test gateway's token and settings, and a gateway in this process.
`processes`: a gateway in a subprocess, and the process groups of what a test starts.
`loadcheck`: a bounded loopback load and the total-queue checker of the fault tests.
`broker`: publishing events, queue depths, draining, and capturing what the gateway sends.
`consumer`: consumers with queues of a test's own, and a worker running for a block.
`waiting`: `eventually`, polling a condition with a deadline.

A downstream team's tests build events with `consumers.testing`, which does ship.
"""
