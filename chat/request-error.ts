// A request the client got wrong, naming the field at fault (OpenAI's `param`).
import { ClusterError } from "../common/errors.js";

export class RequestError extends ClusterError {
  readonly param: string | null;

  constructor(message: string, param: string | null = null) {
    super("bad_request", message);
    this.name = "RequestError";
    this.param = param;
  }
}
