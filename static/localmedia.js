// The local camera and microphone: opening them, explaining why they could
// not be opened, and measuring how loud the microphone is.

const VIDEO = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };

/** The browsers the family page is tested with (README: "Browsers"). */
export const WORKING_BROWSERS = "an up-to-date Chrome, Edge or Firefox";

/**
 * What this browser lacks to make a call at all, or null: "no-webrtc" (no
 * RTCPeerConnection, e.g. a WebKit build without WebRTC) or "unsupported" (no
 * navigator.mediaDevices.getUserMedia: an old browser, or a page not opened over
 * https). Nothing a retry can change, so the page must not try to join.
 */
export function missingCallSupport() {
  if (typeof window.RTCPeerConnection !== "function") return "no-webrtc";
  if (typeof navigator.mediaDevices?.getUserMedia !== "function") return "unsupported";
  return null;
}

/** Why the camera or microphone could not be used, in a few fixed kinds. */
export class LocalMediaError extends Error {
  /** @param {"denied"|"not-found"|"in-use"|"unsupported"|"no-webrtc"|"failed"} kind */
  constructor(kind, cause) {
    super(kind);
    this.name = "LocalMediaError";
    this.kind = kind;
    this.cause = cause;
  }
}

export function classifyMediaError(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "denied";
    case "NotFoundError":
    case "OverconstrainedError":
      return "not-found";
    case "NotReadableError":
    case "AbortError":
      return "in-use";
    case "LocalMediaError":
      return error.kind;
    default:
      return "failed";
  }
}

/**
 * Open microphone and camera. If only the camera fails, the call can still go
 * ahead with sound only: the result then has `cameraProblem` set.
 * Throws LocalMediaError when the microphone cannot be opened.
 *
 * @returns {Promise<{stream: MediaStream, cameraProblem: string|null}>}
 */
export async function openLocalMedia({ audioDeviceId, videoDeviceId } = {}) {
  if (!navigator.mediaDevices?.getUserMedia) throw new LocalMediaError("unsupported");
  const audio = audioDeviceId ? { deviceId: { exact: audioDeviceId } } : true;
  const video = videoDeviceId ? { ...VIDEO, deviceId: { exact: videoDeviceId } } : VIDEO;
  try {
    return { stream: await navigator.mediaDevices.getUserMedia({ audio, video }), cameraProblem: null };
  } catch (both) {
    if (both.name === "OverconstrainedError" && (audioDeviceId || videoDeviceId)) {
      // A remembered device has gone away: fall back to the defaults.
      return openLocalMedia({});
    }
    // The camera may be the only thing missing or refused: try the microphone alone.
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
    } catch (audioOnly) {
      throw new LocalMediaError(classifyMediaError(audioOnly), audioOnly);
    }
    return { stream, cameraProblem: classifyMediaError(both) };
  }
}

/** Open just one kind of device (switching devices in the preview). */
export async function openDevice(kind, deviceId) {
  const constraints =
    kind === "audio"
      ? { audio: deviceId ? { deviceId: { exact: deviceId } } : true }
      : { video: deviceId ? { ...VIDEO, deviceId: { exact: deviceId } } : VIDEO };
  try {
    return await navigator.mediaDevices.getUserMedia(constraints);
  } catch (error) {
    throw new LocalMediaError(classifyMediaError(error), error);
  }
}

/** Microphones and cameras; labels are only filled in once permission is given. */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return {
    microphones: devices.filter((d) => d.kind === "audioinput" && d.deviceId),
    cameras: devices.filter((d) => d.kind === "videoinput" && d.deviceId),
  };
}

/** What to tell a family member, and what they can do about it. */
export function explainForFamily(kind, { cameraOnly = false } = {}) {
  const what = cameraOnly ? "your camera" : "your camera and microphone";
  switch (kind) {
    case "denied":
      return (
        `Your browser is not letting this page use ${what}. ` +
        "To fix this, select the camera or lock icon next to the web address, choose Allow, then select Try again."
      );
    case "not-found":
      return cameraOnly
        ? "We could not find a camera. You can join with sound only, or connect a camera and select Try again."
        : "We could not find a microphone. Connect a microphone or headset (or check it is switched on), then select Try again.";
    case "in-use":
      return (
        `Another app seems to be using ${what}. ` +
        "Close other apps that might use it, such as another video call, then select Try again."
      );
    case "no-webrtc":
      return (
        "It has no support for video calls (WebRTC). " +
        `Open the link you were sent in ${WORKING_BROWSERS}, on a computer, tablet or phone. ` +
        "Safari has not been tested with these calls yet."
      );
    case "unsupported":
      return (
        "This browser cannot use a camera or microphone on this page. " +
        `Open the link you were sent, exactly as it was sent, in ${WORKING_BROWSERS}. ` +
        "Safari has not been tested with these calls yet."
      );
    default:
      return `Something went wrong when starting ${what}. Select Try again, or restart your browser.`;
  }
}

/**
 * Live microphone level from a WebAudio AnalyserNode, reported 0..1 about
 * 20 times a second. Browsers may start the AudioContext suspended until the
 * page is touched; `resume()` is retried on the first key or pointer press.
 */
export class LevelMeter {
  #context;
  #analyser;
  #samples;
  #timer = null;
  #onLevel;
  #wake = () => this.#context.resume().catch(() => {});

  constructor(stream, onLevel) {
    this.#onLevel = onLevel;
    this.#context = new AudioContext();
    this.#analyser = this.#context.createAnalyser();
    this.#analyser.fftSize = 1024;
    this.#samples = new Float32Array(this.#analyser.fftSize);
    this.#context.createMediaStreamSource(stream).connect(this.#analyser);
    this.#context.resume().catch(() => {});
    document.addEventListener("pointerdown", this.#wake, { once: true });
    document.addEventListener("keydown", this.#wake, { once: true });
    this.#timer = setInterval(() => this.#measure(), 50);
  }

  get running() {
    return this.#context.state === "running";
  }

  #measure() {
    this.#analyser.getFloatTimeDomainData(this.#samples);
    let sum = 0;
    for (const sample of this.#samples) sum += sample * sample;
    const rms = Math.sqrt(sum / this.#samples.length);
    // -60 dBFS (silence) .. 0 dBFS (very loud) mapped to 0..1.
    const db = 20 * Math.log10(rms || 1e-8);
    this.#onLevel(Math.min(1, Math.max(0, (db + 60) / 60)));
  }

  stop() {
    clearInterval(this.#timer);
    document.removeEventListener("pointerdown", this.#wake);
    document.removeEventListener("keydown", this.#wake);
    this.#context.close().catch(() => {});
  }
}

/** A short, gentle two-note chime so people can check their speakers. */
export async function playTestSound() {
  const context = new AudioContext();
  await context.resume().catch(() => {});
  const now = context.currentTime;
  for (const [offset, frequency] of [
    [0, 660],
    [0.35, 880],
  ]) {
    const tone = context.createOscillator();
    const gain = context.createGain();
    tone.frequency.value = frequency;
    gain.gain.setValueAtTime(0, now + offset);
    gain.gain.linearRampToValueAtTime(0.25, now + offset + 0.03);
    gain.gain.exponentialRampToValueAtTime(0.001, now + offset + 0.6);
    tone.connect(gain).connect(context.destination);
    tone.start(now + offset);
    tone.stop(now + offset + 0.65);
  }
  setTimeout(() => context.close().catch(() => {}), 1200);
}
